"""SimCLR (Chen et al., ICML 2020): NT-Xent between projections of two augmented views.

Fidelity notes (paper vs google-research/simclr, which is followed where the paper is silent):
- Projector: the paper's ``g(h) = W2 relu(W1 h)``, hidden width = backbone width (2048 for
  ResNet-50; ``proj_hidden_dim=0``), output 128. The official code adds BatchNorm after both linear
  layers and drops their biases; the output BN has a scale but no shift (``center=False``):
  ``proj_last_norm="bn_scale_only"``, our default. lightly / solo-learn use no output BN
  (``proj_last_norm="none"``); solo-learn's CIFAR recipe uses hidden 2048, output 256.
- Temperature: 0.5, the paper's choice for CIFAR-10 and smaller batches (appendix B.9); its
  ImageNet default at batch 4096 is 0.1. E-SSL's official code uses 0.5 (CIFAR) / 0.2 (ImageNet).
- The two views go through the backbone and projector as one batch of 2N (the official code
  concatenates them), so BatchNorm statistics span both views; ``joint_forward=False`` runs them
  separately (E-SSL's and VICReg's official code). The paper's "global BN" (statistics over all
  devices) is SyncBatchNorm, a trainer setting.
- Loss scale: the mean over the 2N anchors (paper); the official code returns twice that.
- Views: ``views="image"`` (default) augments one image twice, as the paper. ``views="object"`` takes two
  rendered views of one object of a 3DIEBench-format dataset (augmented as ``augment.object_views``
  says), as SIE, EquiCaps and seq-JEPA train their SimCLR baselines on 3DIEBench: the positive pair then
  differs by the object's rotation (and colours), the transformation those methods predict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from equissl.config import ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import LastNorm, projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.losses import nt_xent
from equissl.types import StepOutput, Views, ViewSpec

PairViews = Literal["image", "object"]  # objective.views of the two-view methods (pair_views)


@dataclass
class SimCLRConfig(ObjectiveConfig):
    name: str = "simclr"
    temperature: float = 0.5
    proj_hidden_dim: int = 0  # 0: the backbone's width, as the paper and official code
    proj_num_layers: int = 2  # linear layers in the projector (SimCLR v2 uses 3)
    proj_out_dim: int = 128
    proj_last_norm: LastNorm = "bn_scale_only"
    same_view_negatives: bool = True  # False: only other-view negatives (official E-SSL code)
    joint_forward: bool = True  # both views in one batch through backbone and projector
    views: PairViews = "image"  # "object": two rendered views of one object (pair_views)


def pair_views(spec: ViewSpec, views: str) -> ViewSpec:
    """``spec`` with its two views drawn as ``objective.views`` says, for every two-view method.

    ``"image"``: two augmentations of one image, as the papers. ``"object"``: two rendered views of one
    object of a 3DIEBench-format dataset (each augmented as ``augment.object_views`` says), the pairs SIE,
    EquiCaps and seq-JEPA train their invariant baselines on; they then differ by the object's pose and
    lighting, and share no floor hue (docs/reports/2026-12-04-equal-time-bases.md).
    """
    if views not in ("image", "object"):  # a config validates this; a direct caller may not have
        raise ConfigError(f"objective.views must be 'image' or 'object', got {views!r}")
    return dataclasses.replace(spec, source=views)


def global_pair(views: Views, who: str) -> tuple[Tensor, Tensor]:
    """The first two global views, (B, 3, H, W) each, or a ValueError naming the objective."""
    if len(views.images) < 2:
        raise ValueError(f"{who} needs 2 global views, got {len(views.images)}")
    return views.images[0], views.images[1]


class SimCLR(Objective):
    required_views = ViewSpec(source="image", num_views=2)

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or SimCLRConfig()
        if cfg.temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {cfg.temperature}")
        if cfg.proj_num_layers < 1:
            raise ConfigError(f"objective.proj_num_layers must be >= 1, got {cfg.proj_num_layers}")
        self.cfg = cfg
        self.required_views = pair_views(self.required_views, cfg.views)
        width = backbone.num_features
        hidden = cfg.proj_hidden_dim or width
        self.projector = projection_mlp(
            width,
            [hidden] * (cfg.proj_num_layers - 1),
            cfg.proj_out_dim,
            norm="bn",
            last_norm=cfg.proj_last_norm,
        )

    def embed_pair(self, views: Views) -> tuple[Tensor, Tensor, Tensor]:
        """Backbone features of view 0 (B, D) and projections of views 0 and 1 (B, P) each."""
        x_a, x_b = global_pair(views, type(self).__name__)
        if self.cfg.joint_forward and x_a.shape == x_b.shape:
            h = self.backbone(torch.cat([x_a, x_b], dim=0))
            z = self.projector(h)
            n = x_a.shape[0]
            return h[:n], z[:n], z[n:]
        h_a = self.backbone(x_a)
        return h_a, self.projector(h_a), self.projector(self.backbone(x_b))

    def contrastive_loss(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return nt_xent(z_a, z_b, self.cfg.temperature, self.cfg.same_view_negatives)

    def forward(self, views: Views) -> StepOutput:
        h_a, z_a, z_b = self.embed_pair(views)
        loss = self.contrastive_loss(z_a, z_b)
        return StepOutput(loss=loss, metrics={"loss/nt_xent": loss.detach()}, features=h_a.detach())


@OBJECTIVES.register(
    "simclr", SimCLRConfig, description="SimCLR (Chen et al. 2020): NT-Xent between two augmented views"
)
def build_simclr(cfg: SimCLRConfig, backbone: nn.Module) -> SimCLR:
    return SimCLR(backbone, cfg)
