"""Helpers shared by the tests: the one tiny backbone, and view making from an ``AugmentConfig``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equissl.config import AugmentConfig, Config
from equissl.registry import VIEW_MAKERS
from equissl.types import Views, ViewSpec


class TinyBackbone(nn.Module):
    """The backbone contract in a few hundred parameters (fast on CPU): a stride-2 3x3 conv, BatchNorm and
    ReLU give the spatial map (B, width, ceil(H/2), ceil(W/2)); ``forward`` is its global average (B, width)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.num_features = width

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(2, 3))

    def export_state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}


def make_views(
    cfg: AugmentConfig, spec: ViewSpec, batch: dict[str, Tensor], generator: torch.Generator | None
) -> Views:
    """``batch`` through the registered view maker of ``spec.source``, built from ``cfg``."""
    return VIEW_MAKERS.build(spec.source, Config(augment=cfg), spec)(batch, generator)
