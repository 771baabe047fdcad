"""Helpers shared by the tests: the one tiny backbone, view making from an ``AugmentConfig``, and image
folders as users have them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
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


# ----------------------------------------------------------------------------------------------------
# Image folders as users have them, written in the real formats.


def _image(mode: str, size: tuple[int, int], colour) -> Image.Image:
    return Image.new(mode, size, colour)


def write_user_photos(root: Path) -> dict[str, tuple[int, int, int]]:
    """A nested, unlabelled folder of images of mixed sizes, formats and modes, plus one corrupt file and
    files that are not images. Returns {relative path: the RGB every pixel of it decodes to (JPEG: up to
    compression)} for the readable images; ``trip/corrupt.jpg`` is truncated."""
    expected: dict[str, tuple[int, int, int]] = {}

    def save(relative: str, image: Image.Image, rgb: tuple[int, int, int], **kwargs) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)
        expected[relative] = rgb

    save("2024/summer/beach.jpg", _image("RGB", (48, 32), (200, 120, 40)), (200, 120, 40), quality=95)
    save("2024/summer/gray.png", _image("L", (20, 30), 77), (77, 77, 77))
    save("2024/winter/alpha.png", _image("RGBA", (24, 24), (255, 0, 0, 0)), (255, 255, 255))  # transparent
    save("2024/winter/cmyk.jpg", _image("CMYK", (32, 16), (0, 255, 255, 0)), (255, 0, 0), quality=95)
    deep = Image.fromarray(np.full((18, 26), 0x8080, dtype=np.uint16))  # 16-bit gray: 32896 / 257 = 128
    save("2025/scans/deep16.png", deep, (128, 128, 128))
    palette = _image("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    save("2025/palette.png", palette, (10, 200, 30))
    save("2025/web.webp", _image("RGB", (30, 20), (40, 60, 220)), (40, 60, 220), lossless=True)
    save("2025/old.bmp", _image("RGB", (12, 40), (90, 90, 10)), (90, 90, 10))
    save("2025/scans/page.tiff", _image("RGB", (40, 12), (10, 100, 100)), (10, 100, 100))
    rotated, exif = exif_rotated_photo()
    save("rotated.jpg", rotated, (255, 255, 255), quality=95, exif=exif)  # checked pixel by pixel
    (root / "trip").mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    _image("RGB", (64, 64), (10, 20, 30)).save(buffer, format="JPEG")
    (root / "trip" / "corrupt.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "trip" / "notes.txt").write_text("not an image")
    (root / "trip" / "._beach.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # ignored
    return expected


def exif_rotated_photo() -> tuple[Image.Image, bytes]:
    """A 40 x 20 (width x height) image, white with a black 10 x 10 square at its top-left, and the EXIF
    block of orientation 6 (shown rotated 90 degrees clockwise) to save it with: upright it is 20 x 40 with
    the square at its top-right."""
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return image, exif.tobytes()


def write_labelled_folder(root: Path, per_class: int = 4, size: int = 24) -> None:
    """``root/{train,val}/{red,blue}/`` PNGs of mixed sizes whose colour is their class."""
    for split, count in (("train", per_class), ("val", max(1, per_class // 2))):
        for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            for k in range(count):
                path = root / split / name / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (size + 4 * k, size + 2 * (k % 2)), colour).save(path)
