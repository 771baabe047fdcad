"""The backbone contract (timm's convention).

A backbone is an ``nn.Module`` with

- ``num_features: int`` -- width of the pooled features;
- ``forward_features(x)`` -- the spatial map (B, C, h, w) (LiDAR encoders: the bird's-eye-view map);
- ``forward(x) -> (B, num_features)`` -- pooled features;
- ``export_state_dict()`` -- plain keys in the naming of its origin library (torchvision, timm, OpenPCDet);
- ``export_formats: tuple[str, ...]`` -- the ``equissl export --format`` values it supports, and
  ``export_note: str`` -- why a format is missing, when that depends on its settings (else empty);
- for the ``timm`` format, ``timm_model() -> (name, kwargs)``: how ``timm.create_model`` rebuilds it;
- for the ``torchvision`` format, ``torchvision_state_dict()`` (the trunk's torchvision keys),
  ``torchvision_builder() -> str`` (``torchvision.models`` name), ``torchvision_classifier() -> str`` (the
  attribute a consumer sets to ``nn.Identity()`` before loading strictly) and ``torchvision_kwargs()``
  (the builder's keyword arguments); ``detectron2`` / ``mmdet`` also read ``depth`` (ResNets).

Optional: ``onnx_opset`` (an ONNX opset above 17 the model needs), ``take_auxiliary_losses() -> (loss or
None, metrics)`` (terms added to every objective's training loss, :class:`equissl.ssl.base.Objective`),
``export_symmetry() -> (metadata, weights)`` (a symmetrized backbone, :mod:`equissl.backbones.symmetry`).
Any image backbone is wrapped for ``backbone.frame`` / ``backbone.canonicalizer`` by
:func:`equissl.build.build_backbone`.

Which probe fits a backbone is registry data (``BACKBONES.register(..., probe="bev")``), so that the
command line can choose before building anything.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

IMAGE_FORMATS = ("safetensors", "torchvision", "timm", "detectron2", "mmdet", "onnx")


@runtime_checkable
class Backbone(Protocol):
    num_features: int
    export_formats: tuple[str, ...]

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward(self, x: Tensor) -> Tensor: ...

    def export_state_dict(self) -> dict[str, Tensor]: ...
