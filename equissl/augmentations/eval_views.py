"""The deterministic views evaluations score, batched on the evaluation device.

- :func:`resized_view` -- the whole image resized to the crop side and normalised: the features of the
  fast probe, the kNN (offline and online) and the equivariance metrics.
- :func:`random_resized_view` -- RandomResizedCrop and horizontal flip, normalised: the train view of the
  standard linear protocol and of the fine-tune.
- :func:`center_view` -- resized so that a centre crop of ``crop_fraction`` of the side covers the crop
  side, then centre-cropped and normalised: the val view of the standard linear protocol and of the
  fine-tune (torchvision's ``Resize(round(crop / 0.875)) + CenterCrop(crop)`` for ImageNet at 224 px).

Inputs are uint8 (or float in [0, 1]) (B, 3, H, W); outputs float32 (B, 3, size, size), normalised with
``mean`` / ``std``. Resizing is bilinear and antialiased (torchvision's ``Resize`` on tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.augmentations.image import (
    horizontal_flip,
    normalize,
    resized_crop,
    sample_crop_boxes,
    to_float_image,
)


def _resize_shorter(x: Tensor, side: int) -> Tensor:
    """Resize so that the shorter side is ``side`` pixels (aspect kept, rounded as torchvision does)."""
    height, width = x.shape[-2:]
    if min(height, width) == side:
        return x
    scale = side / min(height, width)
    size = (side, int(width * scale)) if height <= width else (int(height * scale), side)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def resized_view(images: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(B, 3, H, W) -> (B, 3, size, size): the whole image resized (bilinear, antialiased), normalised."""
    x = to_float_image(images)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x, mean, std)


def center_view(
    images: Tensor, size: int, crop_fraction: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> Tensor:
    """(B, 3, H, W) -> (B, 3, size, size): shorter side resized to ``round(size / crop_fraction)``, then
    the centre ``size x size`` crop (offsets rounded as torchvision's ``CenterCrop``), normalised.
    ``crop_fraction = 1`` is :func:`resized_view` of a square image."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction}")
    x = _resize_shorter(to_float_image(images), round(size / crop_fraction))
    height, width = x.shape[-2:]
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)  # as torchvision CenterCrop
    return normalize(x[..., top : top + size, left : left + size].contiguous(), mean, std)


def random_resized_view(
    images: Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip_prob: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, 3, H, W) -> (B, 3, size, size): RandomResizedCrop (area ``scale``, aspect ``ratio``, boxes drawn
    as torchvision draws them) then a horizontal flip with probability ``hflip_prob``, normalised -- the
    train view of the standard linear protocol and of the fine-tune. Random numbers come from
    ``generator`` (on the images' device)."""
    x = to_float_image(images)
    batch, _, height, width = x.shape
    boxes = sample_crop_boxes(batch, height, width, scale, ratio, generator, x.device)
    flips = torch.rand(batch, generator=generator, device=x.device) < hflip_prob
    x = horizontal_flip(resized_crop(x, boxes, size), flips.float())
    return normalize(x, mean, std)
