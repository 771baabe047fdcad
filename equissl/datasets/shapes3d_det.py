"""``shapes3d_det``: an embedded detection set composed from shapes3d objects, several per image.

Each image is a ``image_size`` square floor (the shapes3d floor colour ``HSV(hue, 0.6, 0.6)`` under a
vertical light gradient and mild noise) onto which ``objects_per_image`` objects are pasted. Every
object is a fresh instance of a shapes3d class (``build_object``), rendered by shapes3d's own
``render_view`` at a random SO(3) pose and lighting with a random render size (``object_render_sizes``),
and only its pixels (the renderer's coverage mask) are pasted, at a random position that overlaps
earlier objects' boxes by IoU < ``max_overlap_iou``. The box of an object is the bounding box of its
*visible* pixels after every later object was pasted; objects left with fewer than
``min_visible_pixels`` visible pixels are erased (their pixels get the floor back) and not annotated.

Boxes are ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive (a one-pixel object at column c has
``x0 = c, x1 = c + 1``); labels are shapes3d class indices in ``[0, num_classes)``.

:func:`render_detection_set` caches the arrays in ``<cache_dir>/<hash>.npz`` (written to a temporary
name and renamed), keyed by every generation parameter; the output does not depend on anything else.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from equissl.datasets.shapes3d import CLASS_NAMES, build_object, render_view, sample_latents

GENERATOR_VERSION = 1  # bump when a change alters the generated arrays


@dataclass(frozen=True)
class DetectionSetSpec:
    """Generation parameters of one split of the detection set."""

    num_images: int = 400
    image_size: int = 128  # pixels, square
    num_classes: int = 10  # the first num_classes of shapes3d's CLASS_NAMES
    objects_per_image: tuple[int, int] = (2, 4)  # inclusive range
    object_render_sizes: tuple[int, int] = (40, 72)  # render side in pixels; objects cover ~50-80% of it
    max_overlap_iou: float = 0.25
    min_visible_pixels: int = 40
    supersample: int = 2
    seed: int = 0


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    if not others:
        return 0.0
    others = np.stack(others)
    x0, y0 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x1, y1 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return float((inter / (area + areas - inter)).max())


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: a shapes3d floor colour, lighter far away, with noise."""
    floor = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), 0.6, 0.6), dtype=np.float32)
    gradient = np.linspace(rng.uniform(1.1, 1.4), rng.uniform(0.6, 0.9), size, dtype=np.float32)
    image = floor[None, None, :] * gradient[:, None, None] * np.ones((1, size, 1), np.float32)
    return np.clip(image + rng.normal(0, 0.02, image.shape).astype(np.float32), 0, 1)


def _render_object(rng: np.random.Generator, spec: DetectionSetSpec) -> tuple[int, np.ndarray, np.ndarray]:
    """A random object: (label, rgb crop (h, w, 3) uint8, mask crop (h, w) bool), cropped to its mask."""
    label = int(rng.integers(spec.num_classes))
    mesh = build_object(label, rng)
    side = int(rng.integers(spec.object_render_sizes[0], spec.object_render_sizes[1] + 1))
    rgb, mask = render_view(mesh, sample_latents(rng, 1)[0], side, spec.supersample)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return label, rgb[crop], mask[crop]


def compose_image(
    rng: np.random.Generator, spec: DetectionSetSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: (size, size, 3) uint8, boxes (K, 4) float32 xyxy pixels, labels (K,) int64."""
    size = spec.image_size
    background = _background(rng, size)
    image = background.copy()
    owner = np.full((size, size), -1, dtype=np.int64)  # which pasted object each pixel shows
    placed, labels, boxes = [], [], []
    for _ in range(int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))):
        label, rgb, mask = _render_object(rng, spec)
        h, w = mask.shape
        for _attempt in range(20):
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            if _iou(box, boxes) < spec.max_overlap_iou:
                break
        else:
            continue  # no room left for this one
        region = (slice(y, y + h), slice(x, x + w))
        image[region][mask] = rgb[mask].astype(np.float32) / 255.0
        owner[region][mask] = len(placed)
        placed.append(label)
        boxes.append(box)
    for index, label in enumerate(placed):
        visible = owner == index
        if visible.sum() < spec.min_visible_pixels:
            image[visible] = background[visible]
            continue
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        boxes[index] = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
        labels.append((index, label))
    kept = [i for i, _ in labels]
    return (
        np.round(image * 255).astype(np.uint8),
        np.stack([boxes[i] for i in kept]) if kept else np.zeros((0, 4), np.float32),
        np.array([label for _, label in labels], dtype=np.int64),
    )


def spec_hash(spec: DetectionSetSpec) -> str:
    params = {"version": GENERATOR_VERSION, **asdict(spec)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def render_detection_set(spec: DetectionSetSpec, cache_dir: str | Path) -> dict[str, np.ndarray]:
    """Compose (or read from the cache) ``spec.num_images`` images.

    Returns ``images`` (N, S, S, 3) uint8, ``boxes`` (M, 4) float32, ``labels`` (M,) int64 and
    ``offsets`` (N + 1,) int64: the annotations of image i are rows ``offsets[i]:offsets[i+1]``.
    """
    if not 1 <= spec.num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(CLASS_NAMES)}], got {spec.num_classes}")
    if spec.object_render_sizes[1] > spec.image_size:
        raise ValueError("object_render_sizes must not exceed image_size")
    path = Path(cache_dir).expanduser() / f"shapes3d_det-{spec_hash(spec)}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return dict(cached)
    images, boxes, labels, offsets = [], [], [], [0]
    for index in range(spec.num_images):
        image, image_boxes, image_labels = compose_image(np.random.default_rng([spec.seed, index]), spec)
        images.append(image)
        boxes.append(image_boxes)
        labels.append(image_labels)
        offsets.append(offsets[-1] + len(image_labels))
    arrays = {
        "images": np.stack(images),
        "boxes": np.concatenate(boxes).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "offsets": np.array(offsets, dtype=np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


class Shapes3DDetection(Dataset):
    """Items ``(image, target)``: image (3, S, S) uint8; target ``{"boxes": (K, 4) float32 xyxy pixels,
    "labels": (K,) int64 in [1, num_classes]}`` (0 is torchvision's background class)."""

    def __init__(self, spec: DetectionSetSpec, cache_dir: str | Path) -> None:
        self.spec = spec
        self.arrays = render_detection_set(spec, cache_dir)

    def __len__(self) -> int:
        return len(self.arrays["images"])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        start, stop = self.arrays["offsets"][index], self.arrays["offsets"][index + 1]
        image = torch.from_numpy(self.arrays["images"][index]).permute(2, 0, 1).contiguous()
        return image, {
            "boxes": torch.from_numpy(self.arrays["boxes"][start:stop]),
            "labels": torch.from_numpy(self.arrays["labels"][start:stop]) + 1,
        }


def default_cache_dir() -> Path:
    """``$EQUISSL_DATA/shapes3d_det`` if set, else ``~/.cache/equissl/shapes3d_det``."""
    base = os.environ.get("EQUISSL_DATA")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "equissl") / "shapes3d_det"
