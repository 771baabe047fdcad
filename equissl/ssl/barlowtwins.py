"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021): the cross-correlation of the two views'
embeddings over the batch is driven to the identity (:func:`equissl.ssl.losses.barlow_twins_loss`).

Fidelity notes (paper vs facebookresearch/barlowtwins):
- Projector 8192-8192-8192: ``[Linear -> BN -> ReLU] x 2 -> Linear``, no biases (paper and code). The
  default is the paper's; CPU recipes set smaller ``projector_dims``.
- lambda: 5e-3 in the paper, 0.0051 in the code (``lambda_offdiag``).
- Standardisation of the embeddings over the batch: the paper's Algorithm 1 divides by the unbiased
  standard deviation (``standardisation="std"``, default); the code applies ``BatchNorm1d(affine=False)``,
  i.e. the biased variance plus eps 1e-5 (``standardisation="batchnorm"``).
- Global batch: the code converts the model to SyncBatchNorm and all-reduces the cross-correlation, so
  both the standardisation and ``C`` span every GPU's samples; the loss gathers the embeddings with
  gradient and does the same. (The backbone's and projector's own BatchNorms are per process unless
  ``trainer.sync_batchnorm=true``.)
- Each view goes through the networks separately (the code does), so BatchNorm statistics are per view.
- Backbone: the code builds ``resnet50(zero_init_residual=True)`` (the last BatchNorm of each residual
  block starts at zero); the paper-budget recipe sets ``backbone.zero_init_residual: true``.
- Optimiser (recipes): LARS, batch 2048, lr 0.2 for weights and 0.0048 for biases and BN parameters (x
  batch / 256), weight decay 1.5e-6, 10 warmup epochs, cosine decay. Not offered: one learning rate for
  every group (``optim.lr``); the recipes use the weights' rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from equissl.config import ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.losses import barlow_twins_loss
from equissl.ssl.losses.redundancy import Standardisation
from equissl.ssl.simclr import PairViews, global_pair, pair_views
from equissl.types import StepOutput, Views, ViewSpec


@dataclass
class BarlowTwinsConfig(ObjectiveConfig):
    name: str = "barlowtwins"
    projector_dims: tuple[int, ...] = (8192, 8192, 8192)  # hidden..., output
    lambda_offdiag: float = 5e-3
    standardisation: Standardisation = "std"
    views: PairViews = "image"  # "object": two rendered views of one object (simclr.pair_views)


class BarlowTwins(Objective):
    required_views = ViewSpec(source="image", num_views=2)

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or BarlowTwinsConfig()
        if len(cfg.projector_dims) < 1:
            raise ConfigError("objective.projector_dims needs at least the output dimension")
        if cfg.lambda_offdiag < 0:
            raise ConfigError(f"objective.lambda_offdiag must be >= 0, got {cfg.lambda_offdiag}")
        self.cfg = cfg
        self.required_views = pair_views(self.required_views, cfg.views)
        dims = list(cfg.projector_dims)
        self.projector = projection_mlp(backbone.num_features, dims[:-1], dims[-1], norm="bn")

    def forward(self, views: Views) -> StepOutput:
        x_a, x_b = global_pair(views, "BarlowTwins")
        h_a = self.backbone(x_a)
        z_a, z_b = self.projector(h_a), self.projector(self.backbone(x_b))
        loss, terms = barlow_twins_loss(z_a, z_b, self.cfg.lambda_offdiag, self.cfg.standardisation)
        metrics = {"loss/on_diag": terms["on_diag"].detach(), "loss/off_diag": terms["off_diag"].detach()}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "barlowtwins",
    BarlowTwinsConfig,
    description="Barlow Twins (Zbontar et al. 2021): cross-correlation of the views driven to identity",
)
def build_barlowtwins(cfg: BarlowTwinsConfig, backbone: nn.Module) -> BarlowTwins:
    return BarlowTwins(backbone, cfg)
