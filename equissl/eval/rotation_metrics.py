"""Metrics of invariant / equivariant representations on 3DIEBench-format data (SIE's protocol).

Checked against facebookresearch/SIE ``eval_angle_prediction.py``, ``eval_color_prediction.py``,
``eval_prediction_errors.py`` (PRE) and ``eval_MRR_Hk.py``; differences are listed where they occur.
Features are given flat, one row per rendered view, with the object each view belongs to.

- :func:`rotation_prediction_r2` -- an MLP on the concatenated representations of two views of one
  object regresses the quaternion of ``R1^-1 R2``; R^2 on held-out pairs. q and -q are the same rotation:
  the regressor's loss is ``min(|p - q|^2, |p + q|^2)`` and the R^2 residual uses the sign of the target
  nearest the prediction, while the total sum of squares uses the canonical (w >= 0) targets, so a
  prediction of -q for q counts as exact. (SIE regresses scipy's ``as_quat()`` with a plain MSE, whose
  sign depends on how the composition came out.)
- :func:`colour_prediction_r2` -- the same on the floor-hue and light-hue changes.
- :func:`prediction_retrieval_error` (PRE) -- the predictor's output for a source embedding and an
  action retrieves its nearest neighbour (cosine) among all embeddings of the split; PRE is the mean of
  ``1 - <q_true, q_retrieved>^2`` over the *absolute* rotations of the true target and of the retrieved
  view (0: the retrieved view has the right pose).
- :func:`mrr_hits_at_k` -- the rank of the true target among the views of the same object, as MRR and
  Hits@k.
- :func:`linear_classification` -- the project's linear probe (:mod:`equissl.eval.linear_probe`).

R^2 (:func:`r2_score`) of K outputs, three ways (``RegressionProtocol.r2_average``):

- ``"variance_weighted"`` (default): ``1 - sum_k SS_res,k / sum_k SS_tot,k`` with ``SS_tot,k`` around each
  output's mean (scikit-learn's ``variance_weighted``). This is the one consistent with the sign-blind
  quaternion loss: that loss is minimised by a constant of length ``E|q_k|`` along *any* component k (all
  four have the same ``E|q_k|`` for uniform rotations), and every such constant scores ~0 here, whereas
- ``"uniform"``, the mean over outputs of ``1 - SS_res,k / SS_tot,k``, scores a constant along x far below 0
  (w >= 0 after canonicalisation has a small ``SS_tot``, and the sign chosen for x moves w's residual), so
  a head that learnt nothing can read as strongly negative by where its constant happened to point;
- ``"sie"``: SIE's (and EquiCaps') ``r2_score``, ``SS_tot`` around one mean over *all* entries
  (``torch.mean(target)``). It credits predicting the per-component means with a positive R^2 whenever
  the components' means differ: on their targets, scipy's ``as_quat()`` of ``R1^-1 R2`` for 3DIEBench's
  poses, w averages 0.53 and the others ~0, and a constant predictor scores 0.229 (0.244 on canonical
  targets; 0 on rotations uniform on SO(3)). Published R^2 values include that floor; ours start at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.config import ProbeConfig
from equissl.errors import ConfigError, UserError
from equissl.eval.linear_probe import linear_probe
from equissl.latents import colour_deltas, relative_action
from equissl.rotations import canonical_quat

# ----------------------------------------------------------------------------------------------------
# Targets and scores


R2_AVERAGES = ("variance_weighted", "uniform", "sie")


def _r2(residual: Tensor, target: Tensor, average: str) -> float:
    """R^2 from (N, K) squared residuals and the targets they belong to (module docstring)."""
    if average == "sie":
        return float(1 - residual.sum() / (target - target.mean()).pow(2).sum())
    total = (target - target.mean(0)).pow(2).sum(0)
    if average == "variance_weighted":
        return float(1 - residual.sum() / total.sum())
    if average == "uniform":
        return float((1 - residual.sum(0) / total).mean())
    raise ValueError(f"R^2 average must be one of {R2_AVERAGES}, got {average!r}")


def r2_score(pred: Tensor, target: Tensor, average: str = "variance_weighted") -> float:
    """Coefficient of determination of (N, K) predictions; ``average`` as in the module docstring."""
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f"r2_score: expected two (N, K) tensors of equal shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    pred, target = pred.double(), target.double()
    return _r2((target - pred).pow(2), target, average)


def align_quat_sign(pred: Tensor, target: Tensor) -> Tensor:
    """``target`` with each row's sign flipped where ``-target`` is nearer ``pred`` (ties keep the sign)."""
    sign = torch.where((pred * target).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(target.dtype)
    return target * sign


def quat_r2_score(pred: Tensor, target: Tensor, average: str = "variance_weighted") -> float:
    """R^2 of (N, 4) quaternion predictions, blind to the sign of each target (q ~ -q).

    ``SS_res = sum min(|p - q|^2, |p + q|^2)``; ``SS_tot`` of the canonical (w >= 0) targets.
    """
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != 4:
        raise ValueError(
            f"quat_r2_score: expected two (N, 4) tensors, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred, target = pred.double(), canonical_quat(target.double())
    return _r2((align_quat_sign(pred, target) - pred).pow(2), target, average)


def sign_invariant_quat_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over the N x 4 entries of the squared error to the nearer of ``target`` and ``-target``."""
    return F.mse_loss(pred, align_quat_sign(pred.detach(), target))


# ----------------------------------------------------------------------------------------------------
# Pairs of views


def object_groups(object_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows grouped by object: ``(order, starts, counts)`` with ``order`` the row indices sorted by object
    (stable), and each object's block ``order[starts[o] : starts[o] + counts[o]]``, o in sorted id order."""
    order = torch.sort(object_ids, stable=True).indices
    _, counts = torch.unique_consecutive(object_ids[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def sample_view_pairs(
    object_ids: Tensor, pairs_per_object: int = 1, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Indices ``(first, second)`` of ``pairs_per_object`` pairs of distinct views of every object that has
    at least two, each pair uniform over ordered pairs (SIE draws ``np.random.choice(50, 2, replace=False)``).

    object_ids: (N,) the object of each row. Returns two (P,) int64 tensors of row indices.
    """
    order, starts, counts = object_groups(object_ids.cpu())
    keep = counts >= 2
    starts, counts = (
        starts[keep].repeat_interleave(pairs_per_object),
        counts[keep].repeat_interleave(pairs_per_object),
    )
    first = (
        (torch.rand(len(starts), generator=generator, dtype=torch.float64) * counts)
        .long()
        .clamp_max(counts - 1)
    )
    offset = (torch.rand(len(starts), generator=generator, dtype=torch.float64) * (counts - 1)).long()
    second = (first + 1 + offset.clamp_max(counts - 2)) % counts
    return order[starts + first], order[starts + second]


def predictor_queries(object_ids: Tensor) -> tuple[Tensor, Tensor]:
    """SIE's PRE / MRR queries: for every object, its first view (lowest row) as the source and each of its
    views, the source included, as a target. Returns (Q,) source and target row indices."""
    order, starts, counts = object_groups(object_ids.cpu())
    source = order[starts].repeat_interleave(counts)
    return source, order


def context_queries(object_ids: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """SIE's queries with ``context`` source views: for every object with at least that many views, its
    first ``context`` views (in row order) as the sequence a prediction conditions on, and each of its
    views as a target. Returns (Q, context) context and (Q,) target row indices; ``context=1`` gives
    :func:`predictor_queries`."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    order, starts, counts = object_groups(object_ids.cpu())
    keep = counts >= context
    if not bool(keep.any()):
        raise UserError(f"no object has the {context} views a prediction conditions on")
    starts, counts = starts[keep], counts[keep]
    first = order[starts[:, None] + torch.arange(context)[None, :]]  # (objects, context)
    targets = torch.cat(
        [order[start : start + count] for start, count in zip(starts.tolist(), counts.tolist())]
    )
    return first.repeat_interleave(counts, dim=0), targets


# ----------------------------------------------------------------------------------------------------
# Regression from pairs (rotation / colour R^2)


@dataclass
class RegressionProtocol:
    """SIE's ``--deep-end`` head and optimiser; one fresh random pair per object per epoch."""

    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3  # Adam, constant (SIE defines a cosine schedule but never calls it)
    weight_decay: float = 0.0
    hidden_dims: tuple[int, ...] = (1024, 1024)  # () : a linear head
    pairs_per_object: int = 1  # training pairs per object drawn each epoch
    val_pairs_per_object: int = 10  # SIE draws 1 per object; more only lowers the variance
    r2_average: Literal["variance_weighted", "uniform", "sie"] = "variance_weighted"  # module docstring
    seed: int = 0


@dataclass
class PairData:
    """Per-view features of one split: ``features`` (N, D), ``objects`` (N,) object ids, ``latents`` (N, 7)."""

    features: Tensor
    objects: Tensor
    latents: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def pair_regression(
    train: PairData,
    val: PairData,
    target_fn: Callable[[Tensor, Tensor], Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    score_fn: Callable[[Tensor, Tensor, str], float],
    protocol: RegressionProtocol | None = None,
    device: str | torch.device = "cpu",
    predictions: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Fit ``MLP([f(view1), f(view2)]) -> target_fn(latents1, latents2)`` on train pairs; score val pairs.

    Returns ``{"r2": score on val pairs, "train_r2": score on the last epoch's train pairs, "val_pairs": P}``;
    with ``predictions`` (a dict), also fills it with ``val_pred`` and ``val_target`` (P, K) for plots.
    """
    protocol = protocol or RegressionProtocol()
    if protocol.epochs < 1 or protocol.batch_size < 1 or protocol.pairs_per_object < 1:
        raise ValueError("regression: epochs, batch_size and pairs_per_object must be >= 1")
    if protocol.r2_average not in R2_AVERAGES:
        raise ConfigError(f"regression.r2_average must be one of {R2_AVERAGES}, got {protocol.r2_average!r}")
    generator = torch.Generator().manual_seed(protocol.seed)
    torch.manual_seed(protocol.seed)
    val_first, val_second = sample_view_pairs(val.objects, protocol.val_pairs_per_object, generator)
    if len(val_first) == 0 or train.objects.numel() == 0:
        raise UserError("pair regression needs objects with at least two views in both splits")
    out_dim = target_fn(train.latents[:1], train.latents[:1]).shape[-1]
    head = _mlp(2 * train.features.shape[1], protocol.hidden_dims, out_dim).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    features = train.features.to(device)
    with torch.enable_grad():
        for _ in range(protocol.epochs):
            first, second = sample_view_pairs(train.objects, protocol.pairs_per_object, generator)
            targets = target_fn(train.latents[first], train.latents[second]).to(device)
            shuffle = torch.randperm(len(first), generator=generator)
            preds = []
            for batch in shuffle.split(protocol.batch_size):
                inputs = torch.cat([features[first[batch]], features[second[batch]]], dim=1)
                pred = head(inputs)
                loss = loss_fn(pred, targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                preds.append((batch, pred.detach()))
    train_pred = torch.empty_like(targets)
    for batch, pred in preds:
        train_pred[batch] = pred
    with torch.no_grad():
        val_features = val.features.to(device)
        inputs = torch.cat([val_features[val_first], val_features[val_second]], dim=1)
        val_pred = head(inputs).cpu()
    val_targets = target_fn(val.latents[val_first], val.latents[val_second])
    if predictions is not None:
        predictions.update(val_pred=val_pred, val_target=val_targets)
    average = protocol.r2_average
    return {
        "r2": score_fn(val_pred, val_targets, average),
        "train_r2": score_fn(train_pred.cpu(), targets.cpu(), average),
        "val_pairs": len(val_first),
    }


def rotation_prediction_r2(
    train: PairData,
    val: PairData,
    protocol: RegressionProtocol | None = None,
    device: str | torch.device = "cpu",
    predictions: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """R^2 of the relative-rotation quaternion predicted from two views' features (q ~ -q handled);
    ``predictions``: see :func:`pair_regression`."""
    return pair_regression(
        train, val, relative_action, sign_invariant_quat_mse, quat_r2_score, protocol, device, predictions
    )


def rotation_angle(quats: Tensor) -> Tensor:
    """(N, 4) quaternions (x, y, z, w; any norm, any sign) -> (N,) rotation angle in radians, in [0, pi]:
    ``2 atan2(|(x, y, z)|, |w|)`` of the normalised quaternion."""
    quats = quats.double()
    return 2 * torch.atan2(quats[:, :3].norm(dim=1), quats[:, 3].abs())


def colour_prediction_r2(
    train: PairData,
    val: PairData,
    protocol: RegressionProtocol | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """R^2 of the (floor hue, light hue) changes predicted from two views' features."""
    return pair_regression(train, val, colour_deltas, F.mse_loss, r2_score, protocol, device)


# ----------------------------------------------------------------------------------------------------
# Predictor metrics: PRE, MRR, Hits@k


def _unit(x: Tensor, normalize: bool) -> Tensor:
    # SIE divides by (norm + 1e-8) for the targets and by the norm for the predictions
    return x / (x.norm(dim=1, keepdim=True) + 1e-8) if normalize else x


@torch.no_grad()
def nearest_neighbours(queries: Tensor, keys: Tensor, normalize: bool = True, chunk: int = 1024) -> Tensor:
    """(Q,) index of the key with the largest dot product (cosine when ``normalize``) for each query,
    in blocks of ``chunk`` queries and ``16 * chunk`` keys so memory stays bounded."""
    queries, keys = _unit(queries.float(), normalize), _unit(keys.float(), normalize)
    best = torch.empty(len(queries), dtype=torch.long)
    for q0 in range(0, len(queries), chunk):
        block = queries[q0 : q0 + chunk]
        top_value = torch.full((len(block),), -float("inf"))
        top_index = torch.zeros(len(block), dtype=torch.long)
        for k0 in range(0, len(keys), 16 * chunk):
            values, index = (block @ keys[k0 : k0 + 16 * chunk].T).max(dim=1)
            better = values > top_value
            top_value = torch.where(better, values, top_value)
            top_index = torch.where(better, index + k0, top_index)
        best[q0 : q0 + chunk] = top_index
    return best


@torch.no_grad()
def prediction_retrieval_error(
    predicted: Tensor, candidates: Tensor, candidate_quats: Tensor, true_quats: Tensor, normalize: bool = True
) -> float:
    """PRE: ``mean_q 1 - <q_true, q_retrieved>^2``.

    predicted: (Q, E) predictor outputs; candidates: (N, E) embeddings searched (all views of the split);
    candidate_quats: (N, 4) absolute rotation of each candidate view; true_quats: (Q, 4) absolute rotation
    of each query's true target view. Retrieval by largest cosine (``normalize=False``: dot product, SIE's
    ``--no-norm``).
    """
    if len(predicted) != len(true_quats) or len(candidates) != len(candidate_quats):
        raise ValueError(
            "prediction_retrieval_error: predictions / candidates and their quaternions differ in length"
        )
    retrieved = candidate_quats[nearest_neighbours(predicted, candidates, normalize)]
    dots = (F.normalize(retrieved.double(), dim=1) * F.normalize(true_quats.double(), dim=1)).sum(1)
    return float((1 - dots.pow(2)).mean())


@torch.no_grad()
def target_ranks(
    predicted: Tensor,
    candidates: Tensor,
    candidate_objects: Tensor,
    query_objects: Tensor,
    true_index: Tensor,
    normalize: bool = True,
    chunk: int = 256,
) -> Tensor:
    """(Q,) rank (1 = best) of each query's true target among the candidates of its object.

    predicted: (Q, E); candidates: (N, E) with candidate_objects (N,); query_objects: (Q,) the object whose
    views each query ranks; true_index: (Q,) the row of the true target in ``candidates``. Rank =
    1 + number of same-object candidates with a strictly larger similarity (SIE: position in
    ``argsort(-sims)``, where ties fall in arbitrary order).
    """
    order, starts, counts = object_groups(candidate_objects.cpu())
    ids = candidate_objects.cpu()[order[starts]]
    slot = torch.searchsorted(ids, query_objects.cpu())
    if bool((slot >= len(ids)).any()) or not bool(
        (ids[slot.clamp_max(len(ids) - 1)] == query_objects.cpu()).all()
    ):
        raise ValueError("target_ranks: a query's object has no candidates")
    predicted, candidates = _unit(predicted.float(), normalize), _unit(candidates.float(), normalize)
    width = int(counts.max())
    ranks = torch.empty(len(predicted), dtype=torch.long)
    for q0 in range(0, len(predicted), chunk):
        rows = torch.arange(q0, min(q0 + chunk, len(predicted)))
        local = torch.arange(width)
        valid = local[None, :] < counts[slot[rows]][:, None]
        index = order[(starts[slot[rows]][:, None] + local[None, :]).clamp_max(len(order) - 1)]
        sims = torch.einsum("qe,qve->qv", predicted[rows], candidates[index])
        # The true target's similarity read from the same einsum: recomputing it another way can round
        # it one ulp below itself and rank the target behind its own copy.
        is_true = (index == true_index[rows][:, None]) & valid
        if not bool(is_true.any(1).all()):
            raise ValueError("target_ranks: a query's true target is not among its object's candidates")
        true = sims.masked_fill(~is_true, float("-inf")).amax(1, keepdim=True)
        ranks[rows] = 1 + ((sims > true) & valid).sum(1)
    return ranks


def mrr_hits_at_k(ranks: Tensor, ks: Sequence[int] = (1, 2, 5, 10)) -> dict[str, float]:
    """``{"MRR": mean 1/rank, "H@k": fraction with rank <= k}`` from (Q,) ranks."""
    ranks = ranks.double()
    scores = {"MRR": float((1 / ranks).mean())}
    scores.update({f"H@{k}": float((ranks <= k).double().mean()) for k in ks})
    return scores


# ----------------------------------------------------------------------------------------------------
# Classification


def linear_classification(
    train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, cfg: ProbeConfig, seed: int = 0
) -> float:
    """Top-1 (%) of the project's linear probe (standardised features, weight decay chosen on held-out
    train) on frozen representations; SIE trains a linear head with Adam for 300 epochs."""
    return linear_probe(train_x, train_y, val_x, val_y, cfg, seed=seed).top1
