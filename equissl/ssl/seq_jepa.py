"""seq-JEPA (Ghaemi, Muller & Bakhtiari, NeurIPS 2025): predict the next view of a sequence of views.

One step, for M observed views ``x_0 .. x_{M-1}`` of an input and one target view ``x_M``
(``ViewSpec(num_views=M + 1)``; M = 3 by default):

1. the online encoder (``self.backbone``) gives ``z_j = f(x_j)`` (B, D) for the observed views;
2. the relative action ``a_j`` takes view j to view j + 1 (j = 0 .. M-1, so ``a_{M-1}`` leads to the
   target); its 128-d embedding ``e(a_j)`` is concatenated to ``z_j``, except that the last observed
   view's slot, ``e(a_{M-1})``, is zeroed: the action to the target is given to the predictor only;
3. a learnable aggregation token and the M tokens ``[z_j, e(a_j)]`` go through a transformer encoder
   (3 layers, 4 heads, post-norm, no positional embedding: order is carried by the actions) and a final
   LayerNorm; the aggregation token's output is ``z_agg`` (B, D + 128);
4. the predictor maps ``[z_agg, e(a_{M-1})]`` to ``p`` (B, D); the target is the EMA ("target") encoder's
   ``f_ema(x_M)``, without gradient; loss ``1 - cos(p, f_ema(x_M))``, the batch mean;
5. after each optimizer step (:meth:`SeqJEPA.on_step_end`) the target encoder's parameters move towards
   the online ones, ``w_ema <- m w_ema + (1 - m) w``, with ``m`` on BYOL's cosine schedule from 0.996
   to 1 (:func:`ema_momentum`).

Representations: invariant = ``z_agg``, equivariant = the per-view encoder output ``z`` (see
:meth:`SeqJEPA.representations`; ``equissl equivariance`` takes ``z_agg`` of M views of the object,
:meth:`SeqJEPA.object_representations`, as the official code's probes read ``z_agg`` of training-length
sequences). ``StepOutput.features`` (the trainer's online probe, which needs
``backbone.num_features``-wide inputs) is the first observed view's ``z``; the official code's online
classifier reads ``z_agg``.

Actions (``actions``):

- ``"rotation"``: the quaternion (x, y, z, w) of ``R_j^-1 R_{j+1}`` from the 3DIEBench latents' Euler
  angles (:func:`equissl.latents.relative_action`); views are distinct renders of one object
  (``source="object"``). ``"rotation_colour"`` appends the floor-hue and light-hue deltas (6 numbers), the
  official ``rotcolor`` latent.
- ``"augment"``: image-augmentation parameters of ``M + 1`` augmentations of one image
  (``source="image"``): the keys in ``aug_action_params`` (default crop box, colour-jitter factors, blur
  sigma: the official 9-d ``aug`` latent), each view's vector normalised (``action_norm``), and the
  action is the difference of consecutive normalised vectors.

Fidelity notes (paper vs hafezgh/seq-jepa, ``src/models.py: SeqJEPA_Transforms``, ``engine.py``,
``datasets.py``, ``augmentations.py``, ``scripts/script_transformed_views.sh``):

- Action embedding ``Linear(A, 128, bias=False) -> BatchNorm1d(affine=False)`` as in the code; the
  observed actions (including the one that is then zeroed) are embedded as one batch of B * M, the
  target action as a batch of B, as in the code (this only matters for the BatchNorm statistics).
- Transformer: ``nn.TransformerEncoderLayer`` defaults of the code (ReLU, dropout 0.1, feed-forward 4x,
  post-norm), 3 layers, 4 heads, final LayerNorm, zero-initialised aggregation token. The width is
  ``D + 128`` (640 for ResNet-18) and must be divisible by ``num_heads``.
- Predictor: ``Linear(D + 256, 1024, bias=False) -> BN -> ReLU -> Linear(1024, D)`` (``pred_hidden``
  1024 in the script); ``predictor_hidden_dim=0`` gives the code's linear alternative
  ``Linear(bias=False) -> BN``.
- EMA: parameters only (the target's BatchNorm statistics come from its own forward passes, in train
  mode, as in the code). The code updates ``m`` once per *epoch*, ``m_e = 1 - (1 - m0) (cos(pi e / E) +
  1) / 2``; we apply the same formula per optimizer step (BYOL's schedule): the update after step k
  (k = 0 .. K-1) uses ``m_k``, so the first update uses exactly 0.996 and ``m`` reaches 1 at the end.
- Relative rotations: the code uses scipy's ``as_quat()`` without fixing the sign; we use the canonical
  quaternion (w >= 0) so that q and -q, the same rotation, embed identically.
- Augmentation actions, normalisation axis: the code calls ``F.normalize(params, dim=1)`` on the
  (B, views, P) stack, i.e. it normalises each *parameter* across the views of the sequence (target view
  included), not each view's parameter vector. Our default ``action_norm="params"`` normalises each
  view's vector (what a normalised action means); ``action_norm="views"`` reproduces the code,
  ``"none"`` uses raw differences. Crop boxes enter as ``(x0, y0, width, height)`` divided by the output
  side (fractions of the input when ``data.image_size == augment.crop_size``, as in our recipes); the
  code uses torchvision's ``(top, left, height, width)`` in pixels -- a per-coordinate scale, which
  ``"views"`` cancels exactly.
- The code draws the target view of the augmentation setting from a slightly different pipeline (blur
  probability 0.1 and solarisation 0.2, vs blur 1.0 for the observed views); our view maker draws every
  view from the same ``augment`` pipeline.
- Optimiser of the script: AdamW, lr 4e-4, weight decay 1e-3, 20 warmup epochs from 1e-5, cosine to
  1e-5, batch 512, 1000 epochs on 3DIEBench at 128 px (see ``equissl/recipes/seqjepa_resnet18_3diebench.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.config import ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.latents import ACTION_DIMS, relative_action, sequence_actions
from equissl.registry import OBJECTIVES
from equissl.ssl.base import EquivariantObjective
from equissl.ssl.ema import MomentumSchedule, ema_momentum, ema_update, frozen_copy
from equissl.ssl.losses import negative_cosine_loss
from equissl.types import StepOutput, Views, ViewSpec

ActionKind = Literal["rotation", "rotation_colour", "augment"]
ActionNorm = Literal["params", "views", "none"]

# Width of each augmentation parameter in an action vector (units: see augmentation_vectors).
AUG_PARAM_WIDTHS = {"crop": 4, "flip": 1, "jitter": 4, "gray": 1, "blur_sigma": 1}


@dataclass
class SeqJEPAConfig(ObjectiveConfig):
    name: str = "seqjepa"
    num_observed: int = 3  # M: observed views per sequence (plus one target view)
    actions: ActionKind = "rotation"
    aug_action_params: tuple[str, ...] = ("crop", "jitter", "blur_sigma")  # for actions="augment"
    action_norm: ActionNorm = "params"  # "views": the official code's axis (see the module docstring)
    action_embed_dim: int = 128
    num_layers: int = 3
    num_heads: int = 4
    mlp_ratio: int = 4  # transformer feed-forward width = mlp_ratio * (D + action_embed_dim)
    dropout: float = 0.1  # nn.TransformerEncoderLayer's default, as in the official code
    predictor_hidden_dim: int = 1024  # 0: Linear(bias=False) -> BN, the code's linear predictor
    ema_base: float = 0.996
    ema_schedule: MomentumSchedule = "cosine"


# ----------------------------------------------------------------------------------------------------
# Pure functions: augmentation actions.


def augmentation_vectors(params: list[dict[str, Tensor]], keys: tuple[str, ...], view_size: float) -> Tensor:
    """(B, V, P) augmentation-parameter vectors of V views, the ``keys`` concatenated in order.

    ``crop`` becomes ``(x0, y0, x1 - x0, y1 - y0) / view_size`` (the box in input pixels, see
    :mod:`equissl.augmentations.image`, over the output side); ``jitter`` the four factors (brightness,
    contrast, saturation, hue shift); ``flip``, ``gray`` 0/1; ``blur_sigma`` in output pixels.
    """
    unknown = [k for k in keys if k not in AUG_PARAM_WIDTHS]
    if unknown or not keys:
        raise ValueError(
            f"augmentation action keys must be among {sorted(AUG_PARAM_WIDTHS)}, got {list(keys)}"
        )
    vectors = []
    for view in params:
        parts = []
        for key in keys:
            if key not in view:
                raise ValueError(f"views lack the augmentation parameter {key!r} (have {sorted(view)})")
            value = view[key].float()
            if key == "crop":
                x0, y0, x1, y1 = value.unbind(1)
                value = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1) / view_size
            parts.append(value.reshape(value.shape[0], -1))
        vectors.append(torch.cat(parts, dim=1))
    return torch.stack(vectors, dim=1)


def augmentation_actions(vectors: Tensor, norm: str = "params") -> Tensor:
    """(B, V, P) parameter vectors -> (B, V-1, P) actions ``n(v_{j+1}) - n(v_j)``.

    norm: ``"params"`` L2-normalises each view's vector (over P); ``"views"`` each parameter over the V
    views (``F.normalize(vectors, dim=1)``, the official code); ``"none"`` keeps raw vectors.
    """
    if vectors.ndim != 3 or vectors.shape[1] < 2:
        raise ValueError(f"expected (B, V >= 2, P) parameter vectors, got {tuple(vectors.shape)}")
    if norm == "params":
        vectors = F.normalize(vectors, dim=2)
    elif norm == "views":
        vectors = F.normalize(vectors, dim=1)
    elif norm != "none":
        raise ValueError(f"unknown action_norm {norm!r}; expected 'params', 'views' or 'none'")
    return vectors[:, 1:] - vectors[:, :-1]


# ----------------------------------------------------------------------------------------------------
# The objective.


def action_dim(cfg: SeqJEPAConfig) -> int:
    """Width A of one action vector for ``cfg.actions``."""
    if cfg.actions in ACTION_DIMS:
        return ACTION_DIMS[cfg.actions]
    return sum(AUG_PARAM_WIDTHS[k] for k in cfg.aug_action_params)


class SeqJEPA(EquivariantObjective):
    """seq-JEPA over any backbone; see the module docstring. ``required_views`` depends on ``actions``."""

    def __init__(self, backbone: nn.Module, cfg: SeqJEPAConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or SeqJEPAConfig()
        _validate(cfg)
        self.cfg = cfg
        source = "image" if cfg.actions == "augment" else "object"
        self.required_views = ViewSpec(source=source, num_views=cfg.num_observed + 1)
        width = backbone.num_features
        self.action_dim = action_dim(cfg)
        self.token_dim = width + cfg.action_embed_dim
        if self.token_dim % cfg.num_heads:
            raise ConfigError(
                f"seq-JEPA token width {width} + {cfg.action_embed_dim} = {self.token_dim} "
                f"is not divisible by objective.num_heads={cfg.num_heads}"
            )
        self.action_embed = projection_mlp(
            self.action_dim, [], cfg.action_embed_dim, last_norm="bn_no_affine"
        )
        self.agg_token = nn.Parameter(torch.zeros(1, 1, self.token_dim))
        layer = nn.TransformerEncoderLayer(
            self.token_dim,
            cfg.num_heads,
            cfg.mlp_ratio * self.token_dim,
            dropout=cfg.dropout,
            batch_first=True,
        )
        self.aggregator = nn.TransformerEncoder(
            layer, cfg.num_layers, norm=nn.LayerNorm(self.token_dim), enable_nested_tensor=False
        )
        predictor_in = self.token_dim + cfg.action_embed_dim
        if cfg.predictor_hidden_dim > 0:
            self.predictor = projection_mlp(
                predictor_in, [cfg.predictor_hidden_dim], width, norm="bn", last_norm="none", last_bias=True
            )
        else:
            self.predictor = projection_mlp(predictor_in, [], width, last_norm="bn")
        self.target_backbone = frozen_copy(backbone)
        self.current_momentum = cfg.ema_base

    # -- pieces ------------------------------------------------------------------------------------
    def sequence_actions(self, views: Views) -> Tensor:
        """(B, M, A) relative actions: slot j takes view j to view j + 1 (slot M-1: to the target)."""
        cfg = self.cfg
        if cfg.actions == "augment":
            view_size = float(views.images[0].shape[-1])
            vectors = augmentation_vectors(views.params, cfg.aug_action_params, view_size)
            return augmentation_actions(vectors, cfg.action_norm)
        if views.latents is None:
            raise ValueError(
                "seq-JEPA with rotation actions needs views with latents (source='object', "
                "a 3DIEBench-format dataset such as shapes3d)"
            )
        return sequence_actions(list(views.latents), cfg.actions)

    def tokens(self, encodings: Tensor, actions: Tensor | None) -> Tensor:
        """(B, M, D) encodings, (B, M, A) actions -> (B, M, D + E) tokens ``[z_j, e(a_j)]``.

        The last slot's action embedding is zero (the action to the target goes to the predictor);
        ``actions=None`` gives zero embeddings everywhere (a sequence without known actions).
        """
        b, m, _ = encodings.shape
        if actions is None:
            embedded = encodings.new_zeros(b, m, self.cfg.action_embed_dim)
        else:
            if actions.shape != (b, m, self.action_dim):
                raise ValueError(
                    f"expected actions of shape {(b, m, self.action_dim)}, got {tuple(actions.shape)}"
                )
            embedded = self.action_embed(actions.reshape(b * m, -1).to(encodings.dtype)).reshape(b, m, -1)
            keep = torch.ones(m, 1, device=encodings.device, dtype=embedded.dtype)
            keep[-1] = 0.0
            embedded = embedded * keep
        return torch.cat([encodings, embedded], dim=2)

    def aggregate(self, encodings: Tensor, actions: Tensor | None = None) -> Tensor:
        """(B, M, D) encodings (+ (B, M, A) actions) -> (B, D + E) ``z_agg``, the invariant representation."""
        tokens = self.tokens(encodings, actions)
        sequence = torch.cat([self.agg_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.aggregator(sequence)[:, 0]

    def predict(self, aggregate: Tensor, target_action: Tensor) -> Tensor:
        """(B, D + E) ``z_agg`` and (B, A) action to the target -> (B, D) predicted target encoding."""
        embedded = self.action_embed(target_action.to(aggregate.dtype))
        return self.predictor(torch.cat([aggregate, embedded], dim=1))

    # -- training ------------------------------------------------------------------------------------
    def forward(self, views: Views) -> StepOutput:
        m = self.cfg.num_observed
        if len(views.images) < m + 1:
            raise ValueError(
                f"seq-JEPA needs {m + 1} views (M={m} observed + 1 target), got {len(views.images)}"
            )
        actions = self.sequence_actions(views)[:, :m]
        b = views.batch_size
        observed = self.backbone(torch.cat(views.images[:m], dim=0))  # one batch: BN statistics over M views
        encodings = observed.reshape(m, b, -1).transpose(0, 1)
        aggregate = self.aggregate(encodings, actions)
        prediction = self.predict(aggregate, actions[:, -1])
        with torch.no_grad():
            target = self.target_backbone(views.images[m])
        loss = negative_cosine_loss(prediction, target.detach())
        metrics = {"loss/jepa": loss.detach(), "ema_momentum": self.current_momentum}
        return StepOutput(loss=loss, metrics=metrics, features=encodings[:, 0].detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder after optimizer step ``step`` (1-based count of steps done)."""
        momentum = ema_momentum(step - 1, total_steps, self.cfg.ema_base, self.cfg.ema_schedule)
        ema_update(self.target_backbone, self.backbone, momentum)
        # The momentum the *next* update will use, for the logs.
        self.current_momentum = ema_momentum(step, total_steps, self.cfg.ema_base, self.cfg.ema_schedule)

    # -- evaluation interface (the same as SIE's) --------------------------------------------------
    def representations(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> ``inv`` (B, D+E), ``equi`` (B, D), ``full`` (B, 2D+E), ``equi_embedding`` (B, D).

        equi: the online encoder output ``z``; inv: ``z_agg`` of the one-view sequence ``[z, 0]`` (the
        observed slot carries no action, as the last observed slot in training); full: ``[inv, equi]``;
        equi_embedding: ``z`` again, the space the predictor predicts in. For ``z_agg`` of longer
        sequences use :meth:`aggregate` with encodings and actions.
        """
        equi = self.backbone(images)
        inv = self.aggregate(equi[:, None])
        return {"inv": inv, "equi": equi, "full": torch.cat([inv, equi], dim=1), "equi_embedding": equi}

    def object_representations(self, reps: dict[str, Tensor], latents: Tensor) -> dict[str, Tensor]:
        """The paper's invariant representation for the V views of one object: ``inv`` of view i becomes
        ``z_agg`` of the sequence of views ``i, i+1, .., i+M-1`` (cyclically over the object's views;
        M = ``num_observed``, at most V), with the relative rotations between them as in training.

        reps: :meth:`representations` of the V views (in the dataset's view order); latents: (V, 7).
        Returns ``reps`` with ``inv`` and ``full`` replaced. With augmentation actions, which latents do
        not give, ``reps`` is returned unchanged (one-view sequences).
        """
        if self.cfg.actions == "augment":
            return reps
        views = latents.shape[0]
        m = min(self.cfg.num_observed, views)
        order = (torch.arange(views)[:, None] + torch.arange(m)[None, :]) % views  # (V, M) view indices
        encodings = reps["equi"][order.to(reps["equi"].device)]
        actions = None
        if m > 1:
            steps = sequence_actions([latents[order[:, j]].float() for j in range(m)], self.cfg.actions)
            # the last observed slot carries no action (it is zeroed in tokens() anyway)
            actions = torch.cat([steps, steps.new_zeros(views, 1, steps.shape[2])], dim=1)
            actions = actions.to(encodings.device)
        inv = self.aggregate(encodings, actions)
        return {**reps, "inv": inv, "full": torch.cat([inv, reps["equi"]], dim=1)}

    def action_from_latents(self, latents_1: Tensor, latents_2: Tensor) -> Tensor:
        """(B, 7), (B, 7) latents of source and target views -> (B, A) action: the canonical quaternion
        (x, y, z, w) of ``R1^-1 R2`` (+ floor-hue and light-hue deltas for ``"rotation_colour"``)."""
        if self.cfg.actions == "augment":
            raise ValueError("this seq-JEPA was trained with augmentation actions, which latents do not give")
        return relative_action(latents_1.float(), latents_2.float(), self.cfg.actions)

    def predict_equivariant(self, equi_embedding: Tensor, action: Tensor) -> Tensor:
        """(B, D) encoding ``z`` of a view and (B, A) action to another view -> (B, D) predicted ``z`` of it:
        the one-view sequence of :meth:`representations`, aggregated and conditioned on ``action``
        (:meth:`action_from_latents`)."""
        return self.predict(self.aggregate(equi_embedding[:, None]), action)


def _validate(cfg: SeqJEPAConfig) -> None:
    if cfg.num_observed < 1:
        raise ConfigError(f"objective.num_observed must be >= 1, got {cfg.num_observed}")
    if cfg.action_embed_dim < 1 or cfg.num_layers < 1 or cfg.num_heads < 1 or cfg.mlp_ratio < 1:
        raise ConfigError("objective.action_embed_dim, num_layers, num_heads and mlp_ratio must be >= 1")
    if cfg.predictor_hidden_dim < 0:
        raise ConfigError(f"objective.predictor_hidden_dim must be >= 0, got {cfg.predictor_hidden_dim}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"objective.dropout must be in [0, 1), got {cfg.dropout}")
    if not 0.0 <= cfg.ema_base <= 1.0:
        raise ConfigError(f"objective.ema_base must be in [0, 1], got {cfg.ema_base}")
    if cfg.actions == "augment":
        unknown = [k for k in cfg.aug_action_params if k not in AUG_PARAM_WIDTHS]
        if unknown or not cfg.aug_action_params:
            raise ConfigError(
                f"objective.aug_action_params must be a non-empty subset of "
                f"{sorted(AUG_PARAM_WIDTHS)}, got {list(cfg.aug_action_params)}"
            )


@OBJECTIVES.register(
    "seqjepa", SeqJEPAConfig, description="seq-JEPA (Ghaemi et al. 2025): predict the next view of a sequence"
)
def build_seq_jepa(cfg: SeqJEPAConfig, backbone: nn.Module) -> SeqJEPA:
    return SeqJEPA(backbone, cfg)
