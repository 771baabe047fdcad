"""Batched augmentations on the training device that return their parameters (see docs/design.md)."""

from equissl.augmentations import points  # noqa: F401  (registers the lidar_pair view maker)
from equissl.augmentations.image import (
    PARAM_KEYS,
    ImageAugment,
    apply_params,
    chunk_index,
    identity_params,
    sample_params,
)
from equissl.augmentations.rotation import RandomFourFoldRotation
from equissl.augmentations.views import ImageViewMaker, ObjectViewMaker

__all__ = [
    "PARAM_KEYS",
    "ImageAugment",
    "ImageViewMaker",
    "ObjectViewMaker",
    "RandomFourFoldRotation",
    "apply_params",
    "chunk_index",
    "identity_params",
    "sample_params",
]
