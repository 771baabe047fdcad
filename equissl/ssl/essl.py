"""E-SSL (Dangovski et al., ICLR 2022) on SimCLR: ``NT-Xent + lambda * four-fold rotation prediction``.

Every small crop ``views.small[0]`` (B, 3, h, h) is rotated all four ways by
:func:`equissl.groups.rotate_four_ways` (a batch of 4B; label k = k quarter turns
counter-clockwise as displayed, ``torch.rot90(x, k, dims=(2, 3))``; k-major order: the B crops at
0 degrees, then the B at 90, ...), passed through the backbone as one batch, and a rotation
classifier on the backbone features predicts k; lambda = 0.4 (paper and official code).

Fidelity notes (rdangovs/essl, which the paper points to for its details):
- Labels and order as the official ``rotate_images`` (it builds the same four rotations with
  flips and transposes; k = 1 is ``images.flip(3).transpose(2, 3)`` = ``rot90(k=1)``). All four
  rotations of every crop are used, not one random rotation per crop.
- Rotation crop: official CIFAR-10 code, ``RandomResizedCrop(16, scale=(0.2, 1.0))`` (half the
  32 px resolution, same scale range, same flip / colour jitter / grayscale); ImageNet code
  ``RandomResizedCrop(96, scale=(0.05, 0.14))``. Set by ``augment.small_crop_size`` /
  ``augment.small_crop_scale`` (default 0.05-0.4; the shapes3d recipe sets the CIFAR 0.2-1.0, the range
  its measurement used).
- Rotation head: official CIFAR code 512-2048-2048-4 with LayerNorm + ReLU (our default,
  ``rotation_hidden_dims``); ImageNet code adds a 128-d LayerNorm bottleneck
  (``rotation_bottleneck_dim=128``).
- SimCLR part: the official code uses only other-view negatives (``same_view_negatives=False``),
  runs the views separately (``joint_forward=False``) and, on CIFAR, a 512-2048-2048 projector with a
  non-affine output BN (``proj_hidden_dim=2048, proj_out_dim=2048, proj_last_norm="bn_no_affine"``;
  without ``proj_hidden_dim`` the hidden layer keeps the backbone's 512, giving 512-512-2048; temperature 0.5;
  ImageNet: 2048-2048-128 with affine output BN, temperature 0.2). Our defaults are SimCLR's
  (E-SSL = SimCLR + rotation prediction), so that ``essl`` vs ``simclr`` isolates the rotation term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from equissl.groups import rotate_four_ways
from equissl.heads.classifiers import RotationClassifier
from equissl.registry import OBJECTIVES
from equissl.ssl.losses import rotation_loss
from equissl.ssl.simclr import SimCLR, SimCLRConfig
from equissl.types import StepOutput, Views, ViewSpec

NUM_ROTATIONS = 4


@dataclass
class ESSLConfig(SimCLRConfig):
    name: str = "essl"
    rotation_weight: float = 0.4  # lambda
    rotation_hidden_dims: tuple[int, ...] = (2048, 2048)
    rotation_bottleneck_dim: int = 0  # 128: the official ImageNet head


class ESSL(SimCLR):
    required_views = ViewSpec(source="image", num_views=2, num_small=1)

    def __init__(self, backbone: nn.Module, cfg: ESSLConfig | None = None) -> None:
        cfg = cfg or ESSLConfig()
        super().__init__(backbone, cfg)
        self.rotation_head = RotationClassifier(
            backbone.num_features, cfg.rotation_hidden_dims, NUM_ROTATIONS, cfg.rotation_bottleneck_dim
        )

    def forward(self, views: Views) -> StepOutput:
        if not views.small:
            raise ValueError("E-SSL needs a small crop per sample in views.small (ViewSpec num_small=1)")
        h_a, z_a, z_b = self.embed_pair(views)
        contrastive = self.contrastive_loss(z_a, z_b)
        rotated, labels = rotate_four_ways(views.small[0])
        logits = self.rotation_head(self.backbone(rotated))
        rotation = rotation_loss(logits, labels)
        loss = contrastive + self.cfg.rotation_weight * rotation
        metrics = {
            "loss/nt_xent": contrastive.detach(),
            "loss/rotation": rotation.detach(),
            "rotation_acc": (logits.detach().argmax(dim=1) == labels).float().mean(),
        }
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())

    @torch.no_grad()
    def evaluation_metrics(self, images: Tensor) -> dict[str, Tensor]:
        """Per image, the fraction of its four rotations whose quarter-turn count is predicted right."""
        rotated, labels = rotate_four_ways(images)
        correct = (self.rotation_head(self.backbone(rotated)).argmax(dim=1) == labels).float()
        return {"rotation_acc": correct.view(NUM_ROTATIONS, -1).mean(0)}


@OBJECTIVES.register(
    "essl", ESSLConfig, description="E-SSL (Dangovski et al. 2022): SimCLR + four-fold rotation prediction"
)
def build_essl(cfg: ESSLConfig, backbone: nn.Module) -> ESSL:
    return ESSL(backbone, cfg)
