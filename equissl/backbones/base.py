"""The backbone contract (timm's convention).

A backbone is an ``nn.Module`` with
- ``num_features: int`` -- width of the pooled features;
- ``forward_features(x)`` -- the spatial map (B, C, h, w) or tokens (B, N, C);
- ``forward(x) -> (B, num_features)`` -- pooled features;
- ``export_state_dict()`` -- plain keys in the naming of its origin library.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Backbone(Protocol):
    num_features: int

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward(self, x: Tensor) -> Tensor: ...

    def export_state_dict(self) -> dict[str, Tensor]: ...
