"""torchvision ResNets behind the backbone contract.

The module *is* a ``torchvision.models.ResNet`` with ``fc`` replaced by ``nn.Identity``, so its state
dict keys are torchvision's and ``export_state_dict()`` loads into ``torchvision.models.resnetXX()``
with ``strict=True`` once ``fc`` is excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision import models

from equissl.backbones.base import IMAGE_FORMATS
from equissl.config import BackboneConfig
from equissl.registry import BACKBONES


@dataclass
class ResNetConfig(BackboneConfig):
    # "imagenet": 7x7 stride-2 conv + max-pool (total stride 32); "cifar": 3x3 stride-1 conv, no
    # max-pool (total stride 8, 16x the compute at equal input size); "strided": 3x3 stride-2 conv,
    # no max-pool (total stride 16), a middle ground for small images on CPUs.
    stem: Literal["imagenet", "cifar", "strided"] = "imagenet"
    zero_init_residual: bool = False


TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")

_CONSTRUCTORS = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}


class ResNet(models.ResNet):
    """A torchvision ResNet whose ``forward`` returns pooled features instead of logits."""

    def __init__(self, arch: str, stem: str = "imagenet", zero_init_residual: bool = False) -> None:
        reference = _CONSTRUCTORS[arch](weights=None, zero_init_residual=zero_init_residual)
        super().__init__(
            type(reference.layer1[0]),
            [len(reference.layer1), len(reference.layer2), len(reference.layer3), len(reference.layer4)],
            zero_init_residual=zero_init_residual,
        )
        self.arch = arch
        self.stem = stem
        self.num_features = self.fc.in_features
        self.fc = nn.Identity()
        if stem in ("cifar", "strided"):
            stride = 1 if stem == "cifar" else 2
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stride, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> spatial map (B, num_features, H/s, W/s), s the total stride."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_features) globally average-pooled features."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)

    def export_state_dict(self) -> dict[str, Tensor]:
        """torchvision key names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...), no ``fc``."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    # -- what the export needs (equissl.backbones.base) -------------------------------------------------
    @property
    def export_formats(self) -> tuple[str, ...]:
        """Every format with the ``imagenet`` stem; detectors' and timm's ResNets have no other stem."""
        return IMAGE_FORMATS if self.stem == "imagenet" else ("safetensors", "onnx")

    @property
    def export_note(self) -> str:
        if self.stem == "imagenet":
            return ""
        return (
            f"backbone.stem={self.stem!r}: detectors', torchvision's and timm's ResNets have the 7x7 "
            "stride-2 'imagenet' stem; pretrain with backbone.stem=imagenet"
        )

    @property
    def depth(self) -> int:
        return int(self.arch.removeprefix("resnet"))

    def torchvision_builder(self) -> str:
        return self.arch

    def torchvision_classifier(self) -> str:
        """The attribute of ``torchvision.models.resnetXX()`` the export leaves out (set to ``nn.Identity()``)."""
        return "fc"

    def torchvision_kwargs(self) -> dict:
        return {}

    def torchvision_state_dict(self) -> dict[str, Tensor]:
        """The trunk's torchvision keys (``conv1``, ``bn1``, ``layer1-4``; no ``fc``, no extra heads)."""
        return {
            k: v.contiguous() for k, v in self.export_state_dict().items() if k.startswith(TRUNK_PREFIXES)
        }

    def timm_model(self) -> tuple[str, dict]:
        """timm's ``resnetXX`` has our keys (``conv1``, ``bn1``, ``layerN.i.*``, ``downsample.0/1``)."""
        return self.arch, {}


def _register(arch: str) -> None:
    @BACKBONES.register(arch, ResNetConfig, description=f"torchvision {arch}")
    def build(cfg: ResNetConfig) -> ResNet:
        return ResNet(arch, stem=cfg.stem, zero_init_residual=cfg.zero_init_residual)


for _arch in _CONSTRUCTORS:
    _register(_arch)
