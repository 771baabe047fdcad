"""Capsule-network backbone: a torchvision ResNet trunk read out through self-routing capsules
(Hahn, Pyeon & Kim, NeurIPS 2019; the layer is :class:`equissl.heads.capsules.SelfRoutingCapsules`).

:class:`CapsNetResNet` (registered ``capsnet_resnet18``) feeds a torchvision ResNet trunk's last map to
the capsules. ``forward`` returns invariant features chosen by ``readout``:

- ``"trunk+capsules"`` (default): global-average-pooled trunk features, capsule activations and the
  Frobenius norms of the capsule poses, concatenated (512 + 32 + 32 for resnet18). A pose norm is
  invariant to any orthogonal action on the pose (``|P R|_F = |P|_F``), the part of the pose that
  EquiCaps' normalised pose loss leaves free;
- ``"capsules"``: activations and pose norms; ``"activations"``: activations only; ``"trunk"``: pooled
  trunk features only (the representation EquiCaps probes).

The poses (equivariant output) come from :meth:`CapsNetResNet.forward_poses` / ``forward_capsules``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from equissl.backbones.resnet import ResNet, ResNetConfig
from equissl.config import NonNegativeFloat
from equissl.heads.capsules import SelfRoutingCapsules
from equissl.registry import BACKBONES


@dataclass
class CapsNetConfig(ResNetConfig):
    num_capsules: int = 32
    pose_dim: int = 3  # 3x3 pose matrices (EquiCaps on rotations); 4 for 4x4
    num_primary: int = 32  # primary capsule types per position
    map_size: int = 0  # 0: routing weights shared over positions; s > 0: per-position, map must be s x s
    readout: Literal["trunk+capsules", "capsules", "activations", "trunk"] = "trunk+capsules"
    vote_init_std: NonNegativeFloat = 0.0  # 0: the official EquiCaps std (heads/capsules.py); > 0: this std

    tiny_input_size: ClassVar[int] = 32

    @classmethod
    def tiny(cls) -> CapsNetConfig:
        """A seconds-fast setting for tests (32 px input, 2x2 trunk map)."""
        return cls(stem="strided", num_capsules=8, num_primary=4)


READOUTS = ("trunk+capsules", "capsules", "activations", "trunk")


class CapsNetResNet(ResNet):
    """A torchvision ResNet trunk (``forward_features`` of :class:`ResNet`) feeding self-routing capsules."""

    def __init__(
        self,
        arch: str = "resnet18",
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        num_capsules: int = 32,
        pose_dim: int = 3,
        num_primary: int = 32,
        map_size: int | None = None,
        readout: str = "trunk+capsules",
        vote_init_std: float = 0.0,
    ) -> None:
        super().__init__(arch, stem=stem, zero_init_residual=zero_init_residual)
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        self.trunk_features = self.num_features
        self.readout = readout
        self.capsules = SelfRoutingCapsules(
            self.trunk_features, num_capsules, pose_dim, num_primary, map_size, vote_init_std=vote_init_std
        )
        self.num_features = {
            "trunk+capsules": self.trunk_features + 2 * num_capsules,
            "capsules": 2 * num_capsules,
            "activations": num_capsules,
            "trunk": self.trunk_features,
        }[readout]

    def forward_capsules(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> activations (B, J), poses (B, J, d, d)."""
        return self.capsules(self.forward_features(x))

    def forward_poses(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> capsule poses (B, J, d, d), the equivariant output."""
        return self.forward_capsules(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_features) invariant features (see ``readout``)."""
        fmap = self.forward_features(x)
        parts = []
        if self.readout in ("trunk+capsules", "trunk"):
            parts.append(torch.flatten(self.avgpool(fmap), 1))
        if self.readout != "trunk":
            activations, poses = self.capsules(fmap)
            parts.append(activations)
            if self.readout != "activations":
                parts.append(torch.linalg.matrix_norm(poses))  # (B, J) Frobenius norms
        return torch.cat(parts, dim=1)

    def export_state_dict(self) -> dict[str, Tensor]:
        """torchvision ResNet keys for the trunk (``conv1.weight``, ``layer4.1.bn2.*``), ``capsules.*``."""
        return super().export_state_dict()

    @property
    def export_formats(self) -> tuple[str, ...]:
        """The trunk goes to torchvision / detectors like a ResNet's; timm has no capsule model."""
        return tuple(fmt for fmt in super().export_formats if fmt != "timm")


@BACKBONES.register(
    "capsnet_resnet18", CapsNetConfig, description="ResNet-18 trunk read out through self-routing capsules"
)
def build_capsnet_resnet18(cfg: CapsNetConfig) -> CapsNetResNet:
    return CapsNetResNet(
        "resnet18",
        stem=cfg.stem,
        zero_init_residual=cfg.zero_init_residual,
        num_capsules=cfg.num_capsules,
        pose_dim=cfg.pose_dim,
        num_primary=cfg.num_primary,
        map_size=cfg.map_size or None,
        readout=cfg.readout,
        vote_init_std=cfg.vote_init_std,
    )
