"""BYOL (Grill et al., NeurIPS 2020): an online network predicts a momentum target's projection.

Each of the two views goes through the online backbone, projector and predictor, and through the target
backbone and projector (an EMA copy, :mod:`equissl.ssl.ema`, no gradient). The loss is symmetrised:
``byol_loss(q_1, sg(z'_2)) + byol_loss(q_2, sg(z'_1))`` with ``byol_loss = mean_i (2 - 2 cos)``
(:func:`equissl.ssl.losses.byol_loss`). After every optimizer step the target moves by
``xi <- tau xi + (1 - tau) theta``, ``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` (k: 0-based step,
K: ``trainer.max_steps``), ``tau_base = 0.996``.

Fidelity notes (paper vs deepmind/byol, which is followed where the paper is silent):
- Heads: projector ``Linear(4096) -> BN -> ReLU -> Linear(256)`` and predictor of the same shape (paper
  and code). The code's hidden linears keep a bias; BatchNorm cancels it, so ours have none.
- The views go through the networks separately (the code applies the network to each view), so
  BatchNorm statistics are per view; the target's BatchNorm uses its own batch statistics, as the code.
  ``joint_forward=True`` runs both views as one batch instead.
- Loss: the paper's ``L + L~``, the sum of the two directions (the code sums them too, then averages over
  the batch). Its gradient is 4x SimSiam's (``2 - 2 cos`` per direction, two directions summed).
- Momentum: the paper and code anneal tau from 0.996 to 1 with the cosine above over the whole run
  (``ema_schedule="cosine"``); ``ema_schedule="constant"`` keeps ``ema_base``. The code updates the
  target at the start of the next step with that step's tau; ours updates after the optimizer step with
  the tau of the step just taken (the same parameters move, the schedule is one step earlier).
  ``ema_time_constant > 0`` (not in the paper) sets the base from the run's length instead, for runs far
  shorter than the paper's (:func:`equissl.ssl.ema.run_base`).
- Augmentations: the paper and code draw view 1 with blur p=1.0 and no solarisation and view 2 with blur
  p=0.1 and solarisation p=0.2: ``augment.view_blur_prob=[1.0, 0.1] augment.view_solarize_prob=[0.0,
  0.2]`` (the paper-budget recipe sets them; without them every view uses ``augment.blur_prob`` and
  ``augment.solarize_prob``).
- Backbone: the code builds haiku's ResNet-50, whose bottleneck blocks start their last BatchNorm's
  scale at zero; the paper-budget recipe sets ``backbone.zero_init_residual: true`` to match. (Haiku's
  basic blocks, ResNet-18 and -34, start it at one, as the shapes3d recipe does.)
- Optimiser (recipes): LARS, lr 0.2 x batch / 256, weight decay 1.5e-6, biases and BN parameters excluded
  from both decay and adaptation, 10 warmup epochs, cosine decay (``optim.*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from equissl.config import NonNegativeFloat, ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.ema import MomentumSchedule, ema_momentum, ema_update, frozen_copy
from equissl.ssl.losses import byol_loss
from equissl.ssl.simclr import PairViews, global_pair, pair_views
from equissl.types import StepOutput, Views, ViewSpec


@dataclass
class BYOLConfig(ObjectiveConfig):
    name: str = "byol"
    proj_hidden_dim: int = 4096
    proj_out_dim: int = 256
    pred_hidden_dim: int = 4096
    ema_base: float = 0.996
    ema_schedule: MomentumSchedule = "cosine"
    # > 0: the base momentum from the run's length, 1 - 1 / (ema_time_constant * max_steps), replacing
    # ema_base (ssl/ema.py run_base; for runs far shorter than the paper's)
    ema_time_constant: NonNegativeFloat = 0.0
    joint_forward: bool = False  # True: both views in one batch (BatchNorm statistics over both)
    views: PairViews = "image"  # "object": two rendered views of one object (simclr.pair_views)


def check_momentum(base: float) -> None:
    if not 0.0 <= base <= 1.0:
        raise ConfigError(f"objective.ema_base must be in [0, 1], got {base}")


class MomentumTwoView(Objective):
    """Shared by BYOL and MoCo v3: online backbone -> projector -> predictor, an EMA target of the
    backbone and projector, and the per-step momentum in a persistent buffer (so a resumed run logs and
    uses the same value)."""

    required_views = ViewSpec(source="image", num_views=2)

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module, cfg) -> None:
        super().__init__(backbone)
        check_momentum(cfg.ema_base)
        self.cfg = cfg
        self.required_views = pair_views(self.required_views, cfg.views)
        self.projector, self.predictor = projector, predictor
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(projector)
        self.register_buffer("momentum", torch.tensor(float(cfg.ema_base), dtype=torch.float64))

    def online(self, views: Views) -> tuple[Tensor, Tensor, Tensor]:
        """Backbone features of view 0 (B, D) and the predictions of views 0 and 1 (B, P)."""
        x_a, x_b = global_pair(views, type(self).__name__)
        if getattr(self.cfg, "joint_forward", False) and x_a.shape == x_b.shape:
            h = self.backbone(torch.cat([x_a, x_b]))
            q = self.predictor(self.projector(h))
            n = x_a.shape[0]
            return h[:n], q[:n], q[n:]
        h_a = self.backbone(x_a)
        return h_a, self.predictor(self.projector(h_a)), self.predictor(self.projector(self.backbone(x_b)))

    @torch.no_grad()
    def targets(self, views: Views) -> tuple[Tensor, Tensor]:
        """Target projections of views 0 and 1 (B, P), without gradient."""
        x_a, x_b = global_pair(views, type(self).__name__)
        if getattr(self.cfg, "joint_forward", False) and x_a.shape == x_b.shape:
            z = self.target_projector(self.target_backbone(torch.cat([x_a, x_b])))
            return z[: x_a.shape[0]], z[x_a.shape[0] :]
        return (
            self.target_projector(self.target_backbone(x_a)),
            self.target_projector(self.target_backbone(x_b)),
        )

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update after optimizer step ``step`` (1-based) with the momentum of that (0-based) step."""
        cfg = self.cfg
        tau = ema_momentum(
            step - 1, total_steps, cfg.ema_base, cfg.ema_schedule, time_constant=cfg.ema_time_constant
        )
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)
        self.momentum.fill_(tau)


class BYOL(MomentumTwoView):
    def __init__(self, backbone: nn.Module, cfg: BYOLConfig | None = None) -> None:
        cfg = cfg or BYOLConfig()
        width = backbone.num_features
        projector = projection_mlp(width, [cfg.proj_hidden_dim], cfg.proj_out_dim, norm="bn", last_bias=True)
        predictor = projection_mlp(
            cfg.proj_out_dim, [cfg.pred_hidden_dim], cfg.proj_out_dim, norm="bn", last_bias=True
        )
        super().__init__(backbone, projector, predictor, cfg)

    def forward(self, views: Views) -> StepOutput:
        h_a, q_a, q_b = self.online(views)
        z_a, z_b = self.targets(views)  # stop-gradient: computed under no_grad by the EMA target
        loss = byol_loss(q_a, z_b) + byol_loss(q_b, z_a)
        metrics = {"loss/byol": loss.detach(), "ema_momentum": self.momentum.detach().float()}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "byol", BYOLConfig, description="BYOL (Grill et al. 2020): predict a momentum target's projection"
)
def build_byol(cfg: BYOLConfig, backbone: nn.Module) -> BYOL:
    return BYOL(backbone, cfg)
