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
   the online ones, ``w_ema <- m w_ema + (1 - m) w``, with ``m`` on a cosine schedule from the base
   (0.996) to 1 (:func:`ema_momentum`): per step (``ema_schedule="cosine"``, BYOL's) or per epoch
   (``"cosine_per_epoch"``, the official code's). ``ema_time_constant > 0`` replaces the base by the one
   whose time constant ``1 / (1 - m)`` is that fraction of the run (:func:`base_from_time_constant`).

Representations: invariant = ``z_agg``, equivariant = the per-view encoder output ``z`` (see
:meth:`SeqJEPA.representations`; ``equissl equivariance`` takes ``z_agg`` of M views of the object,
:meth:`SeqJEPA.object_representations`, as the official code's probes read ``z_agg`` of training-length
sequences). ``StepOutput.features`` (the trainer's online probe, which needs
``backbone.num_features``-wide inputs) is the first observed view's ``z``; the official code's online
classifier reads ``z_agg``. For PRE / MRR the predictor is measured twice by ``equissl equivariance``: as
SIE's protocol does, from one view's online encoding to the online encodings (:meth:`predict_equivariant`),
and as it is trained, from M views (:meth:`predict_from_context`) to the EMA target's encodings
(``target_embedding`` in :meth:`SeqJEPA.representations`).

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
  1) / 2`` (``ema_schedule="cosine_per_epoch"``; the code's first update of epoch e still uses
  ``m_{e-1}``, set after the previous step, a one-step lag we do not copy). The default applies the same
  formula per optimizer step (BYOL's schedule): the update after step k (k = 0 .. K-1) uses ``m_k``, so
  the first update uses exactly 0.996 and ``m`` reaches 1 at the end. Either way a short run keeps much of
  the target's random initialisation, ``prod_k m_k`` (:func:`~equissl.ssl.ema.initial_weight_fraction`):
  0.36 after 505 steps and 0.13 after 1,010 from 0.996, against ``e^-162`` in the official 81,000-step
  run. ``ema_time_constant`` sets the base from the run's length instead (the official run's 250-step
  time constant is 0.0031 of it), which the shapes3d recipe uses.
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
  probability 0.1 and solarisation 0.2, vs blur 1.0 for the observed views); our recipes draw every
  view from the same ``augment`` pipeline (``augment.view_blur_prob`` / ``view_solarize_prob`` set
  probabilities per view).
- Optimiser of the official training (``main_transformed_views.py``; ``scripts/script_transformed_views.sh``
  runs it on 3DIEBench at 128 px, batch 512, 1000 epochs): ``torch.optim.Adam(lr=0.001, weight_decay=0)``
  over every parameter, then per epoch a linear warm-up over the first 20 epochs from 1e-5 to 4e-4, then
  a constant 4e-4. The script's ``--optimizer AdamW --weight-decay 0.001`` are read only by the
  evaluation branch (``--is-eval``, the probes), and its ``--scheduler`` cosine (to 1e-5) is overwritten:
  every epoch after the warm-up first sets the rate back to 4e-4, so training never decays. Our recipes
  use Adam, weight decay 0, a per-step linear warm-up from ``lr / warmup_steps``, then a constant 4e-4
  (``optim.min_lr_ratio=1``; see ``equissl/recipes/seqjepa_resnet18_3diebench.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.config import NonNegativeFloat, ObjectiveConfig
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
AUG_PARAM_WIDTHS = {"crop": 4, "flip": 1, "jitter": 4, "gray": 1, "blur_sigma": 1, "solarize": 1}


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
    ema_schedule: MomentumSchedule = "cosine"  # per step; "cosine_per_epoch": the official code's
    # > 0: the base momentum from the run's length, 1 - 1 / (ema_time_constant * max_steps), replacing
    # ema_base (the official 3DIEBench run: 250 / 81,000 = 0.0031)
    ema_time_constant: NonNegativeFloat = 0.0


# ----------------------------------------------------------------------------------------------------
# Pure functions: augmentation actions.


def augmentation_vectors(params: list[dict[str, Tensor]], keys: tuple[str, ...], view_size: float) -> Tensor:
    """(B, V, P) augmentation-parameter vectors of V views, the ``keys`` concatenated in order.

    ``crop`` becomes ``(x0, y0, x1 - x0, y1 - y0) / view_size`` (the box in input pixels, see
    :mod:`equissl.augmentations.image`, over the output side); ``jitter`` the four factors (brightness,
    contrast, saturation, hue shift); ``flip``, ``gray``, ``solarize`` 0/1; ``blur_sigma`` in output pixels.
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

    def momentum(self, step: int, total_steps: int) -> float:
        """The EMA momentum of the update after optimizer step ``step`` (0-based) of ``total_steps``."""
        cfg = self.cfg
        if cfg.ema_schedule == "cosine_per_epoch" and self.steps_per_epoch <= 0:
            raise ValueError(
                "objective.ema_schedule=cosine_per_epoch needs the epoch's length: the trainer sets it "
                "with set_steps_per_epoch()"
            )
        return ema_momentum(
            step, total_steps, cfg.ema_base, cfg.ema_schedule, self.steps_per_epoch, cfg.ema_time_constant
        )

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder after optimizer step ``step`` (1-based count of steps done)."""
        ema_update(self.target_backbone, self.backbone, self.momentum(step - 1, total_steps))
        # The momentum the *next* update will use, for the logs.
        self.current_momentum = self.momentum(step, total_steps)

    # -- evaluation interface (the same as SIE's) --------------------------------------------------
    @property
    def prediction_context(self) -> int:
        """Views a prediction conditions on in training: M = ``num_observed``."""
        return self.cfg.num_observed

    def representations(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> ``inv`` (B, D+E), ``equi`` (B, D), ``full`` (B, 2D+E), ``equi_embedding`` (B, D),
        ``target_embedding`` (B, D).

        equi: the online encoder output ``z``; inv: ``z_agg`` of the one-view sequence ``[z, 0]`` (the
        observed slot carries no action, as the last observed slot in training); full: ``[inv, equi]``;
        equi_embedding: ``z`` again, the space the predictor predicts in; target_embedding: the EMA target
        encoder's output, what the predictor is trained to match. For ``z_agg`` of longer sequences use
        :meth:`aggregate` with encodings and actions.
        """
        equi = self.backbone(images)
        inv = self.aggregate(equi[:, None])
        return {
            "inv": inv,
            "equi": equi,
            "full": torch.cat([inv, equi], dim=1),
            "equi_embedding": equi,
            "target_embedding": self.target_backbone(images),
        }

    def context_actions(self, latents: Tensor) -> Tensor | None:
        """(B, M, 7) latents of M views in sequence order -> (B, M, A) actions of their tokens: slot j the
        action from view j to view j + 1, the last slot zero (as in training); None for M = 1."""
        if latents.shape[1] < 2:
            return None
        steps = sequence_actions([latents[:, j].float() for j in range(latents.shape[1])], self.cfg.actions)
        return torch.cat([steps, steps.new_zeros(steps.shape[0], 1, steps.shape[2])], dim=1)

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
        actions = self.context_actions(latents[order])
        inv = self.aggregate(encodings, None if actions is None else actions.to(encodings.device))
        return {**reps, "inv": inv, "full": torch.cat([inv, reps["equi"]], dim=1)}

    def action_from_latents(self, latents_1: Tensor, latents_2: Tensor) -> Tensor:
        """(B, 7), (B, 7) latents of source and target views -> (B, A) action: the canonical quaternion
        (x, y, z, w) of ``R1^-1 R2`` (+ floor-hue and light-hue deltas for ``"rotation_colour"``)."""
        if self.cfg.actions == "augment":
            raise ValueError("this seq-JEPA was trained with augmentation actions, which latents do not give")
        return relative_action(latents_1.float(), latents_2.float(), self.cfg.actions)

    def predict_from_context(self, equi_embeddings: Tensor, latents: Tensor, action: Tensor) -> Tensor:
        """The prediction as trained: (B, M, D) encodings ``z`` of M views in sequence order, their
        (B, M, 7) latents and the (B, A) action from the last of them to the target -> (B, D) predicted
        target encoding (compare with ``target_embedding``)."""
        actions = self.context_actions(latents)
        if actions is not None:
            actions = actions.to(equi_embeddings.device)
        return self.predict(self.aggregate(equi_embeddings, actions), action.to(equi_embeddings.dtype))

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
    if not (cfg.ema_time_constant >= 0 and math.isfinite(cfg.ema_time_constant)):  # direct construction
        raise ConfigError(f"objective.ema_time_constant must be >= 0 (0: off), got {cfg.ema_time_constant}")
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
