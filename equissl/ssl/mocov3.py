"""MoCo v3 (Chen, Xie, He, ICCV 2021): InfoNCE between an online prediction and a momentum encoder's keys.

``q_k = predictor(projector(backbone(x_k)))``, ``k_k = target_projector(target_backbone(x_k))`` (EMA copy,
no gradient); ``L = ctr(q_1, k_2) + ctr(q_2, k_1)`` with ``ctr`` the InfoNCE of this rank's queries
against the keys of the *global* batch, times ``2 t`` (:func:`equissl.ssl.losses.momentum_infonce`). Works
with ResNets and ViTs (``poly_vit_*``), whose patch projection can be frozen (``freeze_patch_embed``).

Fidelity notes (paper vs facebookresearch/moco-v3):
- Heads: hidden 4096, output 256, BN on every layer of both heads including the outputs (no affine on
  the outputs); projector 3 layers, predictor 2 (the paper, and the code's ``MoCo_ViT``). The code's
  ``MoCo_ResNet`` uses a 2-layer projector and a predictor without output BN: ``proj_num_layers=2``,
  ``pred_last_bn=False``. Linears feeding a BN have no bias (as the code).
- Temperature: ``temperature`` = 0.2 (the code's ViT recipes, ``--moco-t=.2``); its ResNet-50 recipes use
  the default 1.0.
- Momentum: 0.99 (paper); the code's recipes raise it to 1 with a half-cycle cosine (``--moco-m-cos``):
  ``ema_schedule="cosine"`` (default, as the recipes), ``"constant"`` keeps it. The code updates the
  momentum encoder at the start of the next step; ours after the optimizer step (same parameters, the
  schedule one step earlier). Its 1000-epoch ResNet-50 recipe uses 0.996.
- ViT: the code freezes the randomly initialised patch projection (``--stop-grad-conv1``, the paper's
  "random patch projection" for stability): ``freeze_patch_embed=True`` sets ``requires_grad=False`` on
  ``backbone.patch_embed`` (the EMA still copies it, unchanged).
- Keys: gathered from every rank without gradient (the code's ``concat_all_gather``).
- Backbone: the code builds its ResNet with ``zero_init_residual=True`` (the last BatchNorm of each
  residual block starts at zero); the ResNet-50 recipe sets ``backbone.zero_init_residual: true``.
- Optimiser (recipes): ViT-S: AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1, 300 epochs, 40 warmup,
  batch 1024-4096; ResNet-50: LARS, lr 0.6 x batch / 256, weight decay 1e-6, batch 4096, 100 epochs,
  10 warmup, crops of scale (0.2, 1) (``--crop-min=.2``; ViT: 0.08).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from equissl.config import NonNegativeFloat, ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.byol import MomentumTwoView
from equissl.ssl.ema import MomentumSchedule
from equissl.ssl.losses import momentum_infonce
from equissl.ssl.simclr import PairViews
from equissl.types import StepOutput, Views


@dataclass
class MoCoV3Config(ObjectiveConfig):
    name: str = "mocov3"
    temperature: float = 0.2
    proj_hidden_dim: int = 4096
    proj_num_layers: int = 3  # the code's MoCo_ResNet: 2
    out_dim: int = 256
    pred_hidden_dim: int = 4096
    pred_last_bn: bool = True  # the code's MoCo_ResNet: False
    ema_base: float = 0.99
    ema_schedule: MomentumSchedule = "cosine"
    # > 0: the base momentum from the run's length, 1 - 1 / (ema_time_constant * max_steps), replacing
    # ema_base (ssl/ema.py run_base; for runs far shorter than the paper's)
    ema_time_constant: NonNegativeFloat = 0.0
    freeze_patch_embed: bool = False  # ViT: the code's --stop-grad-conv1
    scale_by_2t: bool = True  # the paper's and code's ``loss * 2t``
    views: PairViews = "image"  # "object": two rendered views of one object (simclr.pair_views)


class MoCoV3(MomentumTwoView):
    def __init__(self, backbone: nn.Module, cfg: MoCoV3Config | None = None) -> None:
        cfg = cfg or MoCoV3Config()
        if cfg.temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {cfg.temperature}")
        if cfg.proj_num_layers < 1:
            raise ConfigError(f"objective.proj_num_layers must be >= 1, got {cfg.proj_num_layers}")
        if cfg.freeze_patch_embed:
            if not hasattr(backbone, "patch_embed"):
                raise ConfigError("objective.freeze_patch_embed needs a ViT backbone (one with patch_embed)")
            for parameter in backbone.patch_embed.parameters():
                parameter.requires_grad_(False)
        width = backbone.num_features
        projector = projection_mlp(
            width, [cfg.proj_hidden_dim] * (cfg.proj_num_layers - 1), cfg.out_dim, "bn", "bn_no_affine"
        )
        predictor = projection_mlp(
            cfg.out_dim,
            [cfg.pred_hidden_dim],
            cfg.out_dim,
            "bn",
            "bn_no_affine" if cfg.pred_last_bn else "none",
        )
        super().__init__(backbone, projector, predictor, cfg)

    def contrastive_loss(self, views: Views):
        """(backbone features of view 0 (B, D), the symmetrised loss)."""
        h_a, q_a, q_b = self.online(views)
        k_a, k_b = self.targets(views)
        t, scale = self.cfg.temperature, self.cfg.scale_by_2t
        return h_a, momentum_infonce(q_a, k_b, t, scale) + momentum_infonce(q_b, k_a, t, scale)

    def forward(self, views: Views) -> StepOutput:
        h_a, loss = self.contrastive_loss(views)
        metrics = {"loss/infonce": loss.detach(), "ema_momentum": self.momentum.detach().float()}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "mocov3",
    MoCoV3Config,
    description="MoCo v3 (Chen, Xie, He 2021): InfoNCE against a momentum encoder's keys; ResNets and ViTs",
)
def build_mocov3(cfg: MoCoV3Config, backbone: nn.Module) -> MoCoV3:
    return MoCoV3(backbone, cfg)
