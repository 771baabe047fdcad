"""Loss functions of the objectives: pure functions of embeddings, shapes in the docstrings.

Batch statistics span the *global* batch when a process group is initialised: NT-Xent draws its
negatives from every rank and VICReg's variance / covariance are computed over the gathered
embeddings (:func:`equissl.launch.distributed.gather_with_grad`, which back-propagates). Each
function returns this rank's loss such that the mean over ranks, and the DDP-averaged gradient,
equal the single-process values at the same global batch.

Losses are computed in float32 (or float64 for float64 inputs) whatever the autocast dtype: they
are cheap, and the log-sum-exp over negatives and VICReg's covariance lose too much in bfloat16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.launch.distributed import gather_with_grad, rank

_Loss = TypeVar("_Loss", bound=Callable)


def _full_precision(loss: _Loss) -> _Loss:
    """Run ``loss`` with autocast off (on the device of its first tensor), so matmuls stay fp32."""

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        first = next(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))
        with torch.autocast(device_type=first.device.type, enabled=False):
            return loss(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _upcast(z: Tensor) -> Tensor:
    """float32 for half / bfloat16 inputs; float32 and float64 stay as they are."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _check_pair(z_a: Tensor, z_b: Tensor, name: str, min_rows: int = 1) -> None:
    if z_a.ndim != 2 or z_b.ndim != 2:
        raise ValueError(f"{name}: expected (N, D) embeddings, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if z_a.shape != z_b.shape:
        raise ValueError(f"{name}: z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} differ in shape")
    if z_a.shape[0] < min_rows:
        raise ValueError(f"{name}: needs a batch of at least {min_rows}, got {z_a.shape[0]}")


# ----------------------------------------------------------------------------------------------------
# SimCLR


@_full_precision
def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.5, same_view_negatives: bool = True) -> Tensor:
    """SimCLR's NT-Xent (normalized temperature-scaled cross entropy), Chen et al. 2020, eq. (1).

    z_a, z_b: (N, D) projections of two views; row i of each is the positive pair of sample i.
    Returns a scalar: the mean over all 2N anchors (both directions) of
    ``-log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) )`` with ``s`` the cosine similarity, i.e.
    2N - 2 negatives per anchor (every other view in the batch, both views), as in the paper's
    Algorithm 1 (``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``).

    Distributed: anchors are this rank's 2N rows; keys are gathered from every rank with gradient,
    so each anchor has 2 * N_global - 2 negatives, and its positive sits at ``rank * N + i`` of the
    gathered other view (the official code's ``labels_idx = range(N) + replica_id * N``).

    same_view_negatives=False drops the same-view keys from the denominator (N_global - 1
    negatives, all from the other view): the ``infoNCE(z1, z2) / 2 + infoNCE(z2, z1) / 2`` of the
    official E-SSL code (rdangovs/essl), which departs from SimCLR's loss.

    Scale: google-research/simclr returns ``loss_a + loss_b`` (the *sum* of the two directional
    means, twice the paper's value); we follow the paper (and E-SSL's, lightly's code): the mean.
    """
    _check_pair(z_a, z_b, "nt_xent")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    z_a = F.normalize(_upcast(z_a), dim=1)
    z_b = F.normalize(_upcast(z_b), dim=1)
    keys_a, keys_b = gather_with_grad(z_a), gather_with_grad(z_b)  # (M, D), M = N * world size
    n = z_a.shape[0]
    positive = torch.arange(n, device=z_a.device) + rank() * n  # rows of this rank in the gathered keys

    def directional(anchors: Tensor, other_view: Tensor, same_view: Tensor) -> Tensor:
        logits = anchors @ other_view.T / temperature  # (N, M): positive + other-view negatives
        if same_view_negatives:
            own = anchors @ same_view.T / temperature  # (N, M): the anchor itself must not count
            own = own.masked_fill(F.one_hot(positive, same_view.shape[0]).bool(), float("-inf"))
            logits = torch.cat([logits, own], dim=1)
        return F.cross_entropy(logits, positive, reduction="sum")

    total = directional(z_a, keys_b, keys_a) + directional(z_b, keys_a, keys_b)
    return total / (2 * n)


# ----------------------------------------------------------------------------------------------------
# VICReg


@_full_precision
def invariance_loss(z_a: Tensor, z_b: Tensor) -> Tensor:
    """VICReg's invariance term s(Z, Z'): mean over the N x D entries of ``(z_a - z_b) ** 2``.

    z_a, z_b: (N, D). This is ``F.mse_loss`` as in the paper's Algorithm 1 and the official code;
    the paper's eq. (5) writes ``1/N sum_i ||z_i - z'_i||^2`` (no 1/D), a factor D larger, but the
    coefficients (25 / 25 / 1) were set with the mean over D.
    """
    _check_pair(z_a, z_b, "invariance_loss")
    return F.mse_loss(_upcast(z_a), _upcast(z_b))


@_full_precision
def variance_loss(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg's variance term v(Z): ``mean_j relu(gamma - sqrt(Var(z[:, j]) + eps))``.

    z: (N, D), N >= 2; Var is the unbiased (N - 1) batch variance of each dimension. Statistics are
    over the rows given: pass gathered embeddings for the global batch (:func:`vicreg_loss` does).
    A collapsed batch (all rows equal) gives exactly ``gamma - sqrt(eps)``.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"variance_loss: expected (N, D) with N >= 2, got {tuple(z.shape)}")
    std = torch.sqrt(_upcast(z).var(dim=0) + eps)
    return F.relu(gamma - std).mean()


@_full_precision
def covariance_loss(z: Tensor) -> Tensor:
    """VICReg's covariance term c(Z): ``sum_{i != j} C(Z)_ij ** 2 / D``.

    z: (N, D), N >= 2; ``C = (z - mean)^T (z - mean) / (N - 1)`` is the (D, D) batch covariance.
    Statistics are over the rows given (pass gathered embeddings for the global batch).
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"covariance_loss: expected (N, D) with N >= 2, got {tuple(z.shape)}")
    n, d = z.shape
    z = _upcast(z)
    z = z - z.mean(dim=0)
    if n < d:
        # sum_ij C_ij^2 = ||Z^T Z||_F^2 / (N-1)^2 = ||Z Z^T||_F^2 / (N-1)^2: the (N, N) Gram matrix is
        # far cheaper than the (D, D) covariance when D = 8192 (the paper's expander).
        all_squares = (z @ z.T).pow(2).sum() / (n - 1) ** 2
        diagonal_squares = (z.pow(2).sum(dim=0) / (n - 1)).pow(2).sum()
        return (all_squares - diagonal_squares) / d
    cov = z.T @ z / (n - 1)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


@_full_precision
def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim: float = 25.0,
    var: float = 25.0,
    cov: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    average_branches: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg (Bardes et al., ICLR 2022): ``sim * s(Z, Z') + var * [v(Z) + v(Z')] + cov * [c(Z) + c(Z')]``.

    z_a, z_b: (N, D) expander outputs of the two views. Returns ``(total, terms)`` with the
    unweighted terms ``{"inv": s, "var": v(Z) + v(Z'), "cov": c(Z) + c(Z')}`` (scalars).

    Distributed: like the official code, the invariance term is this rank's mean (its mean over
    ranks is the global mean) and both embeddings are gathered with gradient before the variance
    and covariance, which are statistics of the global batch.

    average_branches=True halves the variance term, ``[v(Z) + v(Z')] / 2``, as the official code
    does (``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``, also lightly);
    the paper's eq. (6) and Algorithm 1 sum the branches (also solo-learn), our default. The
    covariance term is summed over branches in both.
    """
    _check_pair(z_a, z_b, "vicreg_loss", min_rows=1)
    inv = invariance_loss(z_a, z_b)
    global_a, global_b = gather_with_grad(z_a), gather_with_grad(z_b)
    if global_a.shape[0] < 2:
        raise ValueError("vicreg_loss: the variance and covariance need a global batch of at least 2")
    variance = variance_loss(global_a, gamma, eps) + variance_loss(global_b, gamma, eps)
    if average_branches:
        variance = variance / 2
    covariance = covariance_loss(global_a) + covariance_loss(global_b)
    total = sim * inv + var * variance + cov * covariance
    return total, {"inv": inv, "var": variance, "cov": covariance}


# ----------------------------------------------------------------------------------------------------
# E-SSL


@_full_precision
def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy of rotation prediction (E-SSL), mean over the M rotated crops.

    logits: (M, K) class scores (K = 4 for four-fold rotations); labels: (M,) int64 in [0, K).
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"rotation_loss: expected (M, K) logits and (M,) labels, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.dtype != torch.long:
        raise ValueError(f"rotation_loss: labels must be int64, got {labels.dtype}")
    return F.cross_entropy(_upcast(logits), labels)
