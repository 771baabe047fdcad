"""The data that flows between the parts of one training step (see docs/design.md, "The path of one training step").

``ViewSpec`` is what an objective asks of the data pipeline; ``Views`` is what the pipeline hands it;
``StepOutput`` is what the objective hands the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class CropGroup:
    """``count`` crops of one kind, size and scale range (multi-crop: DINO's global and local crops).

    kind: ``"global"`` crops go to ``Views.images`` / ``Views.params``, ``"small"`` ones to ``Views.small``
        / ``Views.small_params``, in the order of the spec's groups.
    size: output side in pixels; 0 takes ``augment.crop_size`` (global) / ``augment.small_crop_size``.
    scale: RandomResizedCrop area range; None takes ``augment.crop_scale`` / ``augment.small_crop_scale``.
    """

    kind: str = "global"
    count: int = 1
    size: int = 0
    scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("global", "small") or self.count < 0 or self.size < 0:
            raise ValueError(f"CropGroup needs kind global/small, count >= 0, size >= 0, got {self}")


@dataclass(frozen=True)
class ViewSpec:
    """What an objective needs from the data pipeline.

    source: ``"image"`` -- every view is an augmentation of the same image;
        ``"object"`` -- view k is the k-th distinct rendered view of the same object (3DIEBench pairs or
        sequences), each then augmented as ``augment.object_views`` says, and ``Views.latents`` holds
        their latents.
    num_views: global views per sample (for ``"object"``: rendered views per object).
    num_small: extra small crops per sample (E-SSL's rotation crop), in ``Views.small``.
    shared_chunks: 0 draws augmentation parameters per sample; ``n > 0`` splits the batch into ``n``
        chunks and shares one parameter draw within each chunk (CARE).
    crops: multi-crop (``source="image"``): groups of crops, each with its own size and scale range
        (:class:`CropGroup`); their counts must add up to ``num_views`` (global) and ``num_small``
        (small). Empty: ``num_views`` crops at ``augment.crop_size`` / ``crop_scale`` and ``num_small``
        at ``augment.small_crop_size`` / ``small_crop_scale``.
    """

    source: str = "image"  # "image", "object", or a modality registered in VIEW_MAKERS (e.g. LiDAR)
    num_views: int = 2
    num_small: int = 0
    shared_chunks: int = 0
    crops: tuple[CropGroup, ...] = ()

    def __post_init__(self) -> None:
        if self.crops:
            counts = {
                kind: sum(g.count for g in self.crops if g.kind == kind) for kind in ("global", "small")
            }
            if (counts["global"], counts["small"]) != (self.num_views, self.num_small):
                raise ValueError(
                    f"ViewSpec crops hold {counts['global']} global and {counts['small']} small crops, "
                    f"num_views={self.num_views} and num_small={self.num_small}"
                )

    def crop_groups(self, augment) -> list[tuple[str, int, int, tuple[float, float]]]:
        """(kind, count, output side, scale range) of every group, defaults taken from ``augment``
        (an :class:`~equissl.config.AugmentConfig`)."""
        groups = self.crops or (
            CropGroup("global", self.num_views),
            CropGroup("small", self.num_small),
        )
        resolved = []
        for group in groups:
            is_global = group.kind == "global"
            size = group.size or (augment.crop_size if is_global else augment.small_crop_size)
            scale = group.scale or (augment.crop_scale if is_global else augment.small_crop_scale)
            resolved.append((group.kind, group.count, size, tuple(scale)))
        return resolved


@dataclass
class Views:
    """A batch of views with the parameters of the transformations that produced them.

    images: ``num_views`` tensors (B, 3, H, W), float, normalised with the data's mean/std (empty for
        point-cloud sources).
    params: one dict per view of per-sample tensors (B, ...), units documented in
        :mod:`equissl.augmentations.image` (pixels of the output frame, radians, factors).
    small / small_params: the small crops and their parameters (empty unless ``num_small > 0``).
    labels: (B,) int64 class labels (used only by the online probe), or None.
    latents: for ``source="object"``, one (B, 7) float tensor per view: extrinsic xyz Euler angles
        (radians), floor hue, light theta, light phi, light hue -- the 3DIEBench latent layout.
    points: point-cloud views (B, N, C), float, xyz in metres first (empty for image sources), as the
        ``lidar_pair`` view maker documents.
    extras: modality-specific tensors (e.g. scene flow), documented by the view maker that fills them.
    """

    images: list[Tensor]
    params: list[dict[str, Tensor]]
    small: list[Tensor] = field(default_factory=list)
    small_params: list[dict[str, Tensor]] = field(default_factory=list)
    labels: Tensor | None = None
    latents: list[Tensor] | None = None
    points: list[Tensor] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return (self.images or self.points)[0].shape[0]


@dataclass
class StepOutput:
    """What an objective returns for one batch.

    loss: scalar tensor to back-propagate.
    metrics: scalars to log, named ``"loss/<term>"`` or ``"<metric>"`` (tensors or floats).
    features: (B, D) backbone features of the first view, detached, for the online linear probe.
    """

    loss: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    features: Tensor | None = None

    def detached_metrics(self) -> dict[str, float]:
        return {
            k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in self.metrics.items()
        }
