"""``imagefolder``: a folder of the user's own images, labelled or not, or a text file listing them.

Layouts (``data.root``; see docs/data.md, "Your own images"):

- **split folders**, ``root/train/...`` and optionally ``root/val/...``: with ``data.labels=auto`` they are
  labelled when every image of ``train/`` lies in a subfolder (``train/<class>/**``, the ImageNet layout;
  classes are the sorted first-level folder names of ``train/``, label = position), else unlabelled;
- **any other folder tree**, ``root/**``: the whole tree is the train split, unlabelled with
  ``data.labels=auto`` or ``none``, labelled by its first-level folders with ``data.labels=folders``;
- **a file list**, ``data.file_list`` (train) and ``data.val_file_list`` (val): one image per line,
  ``path`` or ``path<whitespace>label`` (a tab before the label when the path holds spaces), ``#`` starts
  a comment line. Relative paths are read from ``data.root`` when it is set, else from the list's folder.
  Labels are integers (used as given) or class names (sorted, label = position); with ``labels=auto`` a
  list is labelled when its lines carry labels, and then every line must.

``labels=folders`` labels every image by the first folder of its path below the split folder (or below the
list's base folder), ``labels=none`` reads everything unlabelled (label -1, ``num_classes`` 0: no online
probe). A labelled dataset without a val split (no ``val/``, no ``val_file_list``) holds out
``data.val_fraction`` of each class, evenly spread over its sorted files. An unlabelled one has no val
split: it is probed on a labelled folder (``equissl probe --run RUN --data FOLDER``).

Files: ``.jpg .jpeg .png .webp .bmp .tif .tiff .gif .ppm .pgm`` (any case); names starting with a dot
(``.DS_Store``, macOS ``._*`` companions) and dot-folders are ignored. Folder symlinks are followed, each
real folder once, so a symlink loop or two links to one folder list its images once.

Decoding (:func:`decode_image`): the EXIF orientation is applied; grayscale, palette, CMYK and RGB become
RGB; transparency (RGBA, LA, palette with a transparent colour) is composited onto white; 16-bit images
(``I;16*``, and 32-bit integer ``I``, read as 16-bit) are scaled by 255 / 65535, float ``F`` images by 255
(values in [0, 1]). Multi-frame files give their first frame.

Items: ``{"image": uint8 (3, image_size, image_size), "label": int64 ()}``, the shorter side resized to
``image_size`` (antialiased) and centre-cropped (what the fast path, the probes and the evaluations read);
``full_item(index)`` gives ``{"image": uint8 (3, H, W)}`` at the decoded resolution, from which pretraining
cuts its crops when ``data.crops=full`` (:mod:`equissl.augmentations.crops`). With ``data.decode=device``
the workers call ``encoded_item(index)`` instead (:func:`read_for_device`: a JPEG's bytes and header, other
formats decoded), and the training process decodes the JPEGs on its device.

An unreadable file is skipped with a warning naming it, recorded in ``bad_files`` and counted in
``skipped_reads`` (per process); the item falls back deterministically to the next readable one.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from equissl.config import DataConfig, Fraction
from equissl.datasets.ie3d import data_root
from equissl.datasets.images import UNLABELLED, check_split_and_source, square_image
from equissl.errors import ConfigError, UserError
from equissl.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
LAYOUTS = (
    "root/train/<class>/** (labelled), any folder tree root/** (unlabelled), or data.file_list "
    "(one path per line, optionally followed by a label)"
)
_MAX_16BIT = 65535.0
_EXIF_ORIENTATION = 0x0112
_JPEG_SOS, _JPEG_EOI = b"\xff\xda", b"\xff\xd9"  # start of scan, end of image


@dataclass
class ImageFolderConfig(DataConfig):
    name: str = "imagefolder"
    # auto: labelled by class folders in the split layout (train/<class>/) or by a file list's labels,
    # else unlabelled; folders: by the first folder of every path; none: unlabelled.
    labels: Literal["auto", "folders", "none"] = "auto"
    file_list: str = ""  # a text file listing the train images (see the module docstring); empty: the tree
    val_file_list: str = ""  # the same for the val split
    val_fraction: Fraction = 0.2  # held out of each class when labelled data has no val split
    # full: pretraining cuts each view's crop from the decoded full-resolution image in the data workers;
    # resized: from the image_size square (the fast path, as fixed-size datasets do).
    crops: Literal["full", "resized"] = "full"
    # workers: the data workers decode every image (PIL); device: they only read the JPEG files' bytes and
    # headers, and the training process decodes them batched on its device (torchvision's decode_jpeg),
    # then cuts the same crops; other formats are still decoded in the workers. Needs crops=full.
    decode: Literal["workers", "device"] = "workers"

    def check(self, config) -> None:
        if self.decode == "device" and self.crops != "full":
            raise ConfigError(
                "data.decode=device decodes the full images for data.crops=full; with data.crops="
                f"{self.crops} the workers resize every image: set data.decode=workers"
            )


# ----------------------------------------------------------------------------------------------------
# Decoding.


def _rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of a PIL image of any mode; see the module docstring for the conversions."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values * (255.0 / _MAX_16BIT)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.round(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_image(path: str | Path | BinaryIO) -> Tensor:
    """uint8 (3, H, W) RGB of an image file (a path or an open binary file), EXIF orientation applied
    (H, W after the rotation).

    Raises whatever the decoder raises for a file it cannot read (callers count those as unreadable).
    """
    with Image.open(path) as image:
        image.seek(0)
        upright = ImageOps.exif_transpose(image)
        array = _rgb_array(upright)
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _complete_jpeg(data: bytes) -> bool:
    """Whether the JPEG's last scan is followed by an end-of-image marker: a file cut short lacks it.

    (Inside a scan 0xFF is always followed by 0x00 or a restart marker, so 0xFFD9 is the end marker.)"""
    return data.rfind(_JPEG_EOI) > data.rfind(_JPEG_SOS) >= 0


def read_for_device(path: str | Path) -> dict[str, Tensor]:
    """What a data worker sends when the training process decodes (``data.decode=device``).

    A complete baseline or progressive JPEG in RGB or grayscale: ``{"data": uint8 (N,) the file's bytes,
    "encoded": bool () True, "orientation": int64 () its EXIF orientation (1: upright; 2..8 as in EXIF),
    "size": int64 (2,) (height, width) once upright}``, read from the header only. Any other file (PNG,
    CMYK JPEG, one cut short, ...): decoded here by :func:`decode_image`, ``{"data": uint8 (3, H, W),
    "encoded": False, "orientation": 1, "size": (H, W)}``, so it fails (unreadable) exactly as there.
    """
    raw = Path(path).read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L") and _complete_jpeg(raw):
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
            orientation = orientation if 2 <= orientation <= 8 else 1  # what ImageOps.exif_transpose reads
            width, height = image.size
            if orientation >= 5:  # 5..8 turn the image a quarter: the sides swap
                width, height = height, width
            return {
                "data": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                "encoded": torch.tensor(True),
                "orientation": torch.tensor(orientation),
                "size": torch.tensor([height, width]),
            }
    pixels = decode_image(io.BytesIO(raw))
    return {
        "data": pixels,
        "encoded": torch.tensor(False),
        "orientation": torch.tensor(1),
        "size": torch.tensor(list(pixels.shape[-2:])),
    }


def exif_upright(image: Tensor, orientation: int) -> Tensor:
    """(..., H, W) image as stored -> upright, for an EXIF orientation 1..8: what PIL's
    ``ImageOps.exif_transpose`` does, on a tensor of any device."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:  # transpose
        return image.transpose(-2, -1)
    if orientation == 6:  # turned 90 degrees clockwise
        return image.rot90(-1, dims=(-2, -1))
    if orientation == 7:  # transverse
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # turned 90 degrees counter-clockwise
        return image.rot90(1, dims=(-2, -1))
    return image


def decode_jpegs(
    data: list[Tensor], orientation: list[int], device: torch.device | str
) -> list[Tensor | Exception]:
    """Upright uint8 (3, H, W) RGB on ``device`` of each JPEG's bytes (uint8 (N,) on the CPU), decoded in
    one batched ``torchvision.io.decode_jpeg`` call, the EXIF ``orientation`` applied by :func:`exif_upright`.

    When the batch fails, each file is decoded alone; one the device decoder refuses is decoded by PIL
    (:func:`decode_image`) on the CPU, and one that neither reads is returned as the exception."""
    if not data:
        return []
    try:
        decoded = _decode_jpeg(data, device)
    except RuntimeError:
        return [_decode_jpeg_alone(one, turn, device) for one, turn in zip(data, orientation, strict=True)]
    return [exif_upright(image, turn) for image, turn in zip(decoded, orientation, strict=True)]


def _decode_jpeg(data: Tensor | list[Tensor], device: torch.device | str) -> Tensor | list[Tensor]:
    with warnings.catch_warnings():
        # torchvision 0.29 announces the move of its decoders to TorchCodec on every call
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_jpeg_alone(data: Tensor, orientation: int, device: torch.device | str) -> Tensor | Exception:
    try:
        return exif_upright(_decode_jpeg(data, device), orientation)
    except RuntimeError:
        pass
    try:  # PIL applies the EXIF orientation itself
        return decode_image(io.BytesIO(data.numpy().tobytes())).to(device)
    except Exception as error:  # noqa: BLE001 (whatever the decoder raises, the file is unreadable)
        return error


# ----------------------------------------------------------------------------------------------------
# Listing.


def _hidden(name: str) -> bool:
    return name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted by path, following folder symlinks but each real folder once."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        stat = os.stat(directory)
        if (stat.st_dev, stat.st_ino) in seen:  # reached again through a symlink: a loop or a second link
            subdirectories[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subdirectories[:] = sorted(d for d in subdirectories if not _hidden(d))
        files.extend(
            Path(directory) / n
            for n in sorted(names)
            if not _hidden(n) and n.lower().endswith(IMAGE_EXTENSIONS)
        )
    return files


def _is_integer(tag: str | None) -> bool:
    return tag is not None and tag.lstrip("+-").isdigit()


def _first_folder(path: Path, base: Path) -> str | None:
    """The first folder of ``path`` below ``base``, or None for a file directly in ``base``."""
    try:
        parts = path.relative_to(base).parts
    except ValueError:
        raise UserError(f"{path} is not below {base}: labels=folders needs paths inside it") from None
    return parts[0] if len(parts) > 1 else None


def read_file_list(list_file: Path, base: Path) -> list[tuple[Path, str | None]]:
    """(path, label or None) per line of a file list; relative paths are joined to ``base``."""
    if not list_file.is_file():
        raise UserError(f"data file list {list_file} does not exist: expected one image path per line")
    entries = []
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            path_text, label = (part.strip() for part in line.rsplit("\t", 1))
        elif (base / line).exists() or " " not in line:
            path_text, label = line, None
        else:
            path_text, label = line.rsplit(None, 1)
        if not path_text:
            raise UserError(f"{list_file}, line {number}: no path before the label {label!r}")
        entries.append((base / path_text, label))
    if not entries:
        raise UserError(f"data file list {list_file} lists no images")
    return entries


@dataclass
class _Listing:
    """One split's files with the label text of each (a class folder, a list's label, or None)."""

    files: list[Path]
    tags: list[str | None]
    base: Path  # where the paths' first folders are read from (labels=folders)
    from_list: bool
    split_folders: bool = False  # root/train/ (and root/val/) rather than the whole tree


def _folder_listing(folder: Path, split_folders: bool) -> _Listing:
    files = image_files(folder)
    return _Listing([*files], [_first_folder(f, folder) for f in files], folder, False, split_folders)


def _list_listing(list_file: Path, base: Path, labels: str) -> _Listing:
    entries = read_file_list(list_file, base)
    tags = [label for _, label in entries]
    if labels == "folders":
        tags = [_first_folder(path, base) for path, _ in entries]
    return _Listing([path for path, _ in entries], tags, base, from_list=True)


# ----------------------------------------------------------------------------------------------------
# The dataset.


class ImageFolderDataset(Dataset):
    """The user's images; layouts, labels, decoding and failure handling in the module docstring.

    root: the dataset folder. split: ``"train"`` or ``"val"``. image_size: side of ``__getitem__``'s
    square, pixels. labels: ``"auto"``, ``"folders"`` or ``"none"``. file_list / val_file_list: text files
    listing the split's images. val_fraction: held out of each class when labelled data has no val split.
    full_images: pretraining reads ``full_item`` (crops from the full image) rather than the square.
    decode: ``"workers"`` or ``"device"`` (pretraining's workers read ``encoded_item``; see the module
    docstring).
    """

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        image_size: int = 64,
        labels: str = "auto",
        file_list: str | Path | None = None,
        val_file_list: str | Path | None = None,
        val_fraction: float = 0.2,
        full_images: bool = False,
        decode: str = "workers",
    ) -> None:
        check_split_and_source("imagefolder", split, "image")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if labels not in ("auto", "folders", "none"):
            raise ValueError(f"labels must be auto, folders or none, got {labels!r}")
        self.root = Path(root).expanduser() if root is not None else None
        if decode not in ("workers", "device"):
            raise ValueError(f"decode must be workers or device, got {decode!r}")
        self.split, self.image_size, self.full_images = split, image_size, full_images
        self.decode = decode
        train, val = self._listings(labels, file_list, val_file_list)
        labelled = self._labelled(train, labels)
        names = self._class_names(train) if labelled else []
        if labelled and val is None:
            train, val = self._hold_out(train, names, val_fraction)
        if val is None and split == "val":
            raise UserError(
                f"the image folder {self.root} is unlabelled, so it has no val split to probe on: probe the "
                "run on a labelled folder (equissl probe --run RUN --data FOLDER, FOLDER/train/<class>/...)"
            )
        listing = train if split == "train" else val
        if not listing.files:
            where = "the file list" if listing.from_list else str(listing.base)
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {where}: expected {LAYOUTS}")
        self.files = listing.files
        self.class_names = names
        self.num_classes = len(names)
        self.labels = self._label_array(listing, names, labelled)
        self.bad_files: list[str] = []
        self.skipped_reads = 0
        self._bad: set[int] = set()

    # -- layout --------------------------------------------------------------------------------------

    def _listings(
        self, labels: str, file_list: str | Path | None, val_file_list: str | Path | None
    ) -> tuple[_Listing, _Listing | None]:
        """(train, val or None) listings of the layout in use."""
        if file_list:
            list_file = Path(file_list).expanduser()
            if self.root is not None and not self.root.is_dir():
                raise UserError(
                    f"data.root {self.root} (where the file list's paths are read from) does not exist"
                )
            base = self.root if self.root is not None else list_file.parent
            self.root = base
            train = _list_listing(list_file, base, labels)
            val = _list_listing(Path(val_file_list).expanduser(), base, labels) if val_file_list else None
            return train, val
        if val_file_list:
            raise UserError("data.val_file_list needs data.file_list (the train images) as well")
        if self.root is None or not self.root.is_dir():
            raise UserError(f"image folder root {self.root} does not exist: expected {LAYOUTS}")
        if (self.root / "train").is_dir():
            val_folder = self.root / "val"
            return _folder_listing(self.root / "train", True), (
                _folder_listing(val_folder, True) if val_folder.is_dir() else None
            )
        return _folder_listing(self.root, False), None

    @staticmethod
    def _labelled(train: _Listing, labels: str) -> bool:
        if labels == "none":
            return False
        tags = train.tags
        if labels == "folders":
            loose = next((f for f, tag in zip(train.files, tags) if tag is None), None)
            if loose is not None:
                raise UserError(
                    f"data.labels=folders: {loose} is not inside a class folder of {train.base}; move it into "
                    "one, or set data.labels=none"
                )
            return bool(tags)
        # auto: a list's labels, or class folders in the split layout (train/<class>/).
        if train.from_list:
            with_label = [tag is not None for tag in tags]
            if any(with_label) and not all(with_label):
                missing = train.files[with_label.index(False)]
                raise UserError(
                    f"{missing}: every line of the file list needs a label once one has (or set data.labels=none)"
                )
            return any(with_label)
        return train.split_folders and bool(tags) and all(tag is not None for tag in tags)

    @staticmethod
    def _class_names(train: _Listing) -> list[str]:
        """Sorted class names; a file list's integer labels name classes 0 .. max (used as given)."""
        tags = sorted({tag for tag in train.tags if tag is not None})
        if train.from_list and tags and all(_is_integer(tag) for tag in tags):
            values = [int(tag) for tag in tags]
            if min(values) < 0:
                raise UserError(f"labels must be >= 0, got {min(values)}")
            return [str(k) for k in range(max(values) + 1)]
        return tags

    @staticmethod
    def _hold_out(train: _Listing, names: list[str], fraction: float) -> tuple[_Listing, _Listing]:
        """(train, val): ``fraction`` of each class's sorted files, evenly spread, at least one when the
        class has two or more."""
        keep, held = [], []
        for name in names:
            members = sorted(i for i, tag in enumerate(train.tags) if tag == name)
            count = len(members)
            held_count = max(1, round(count * fraction)) if count >= 2 else 0
            chosen = {members[int((j + 0.5) * count / held_count)] for j in range(held_count)}
            held.extend(sorted(chosen))
            keep.extend(i for i in members if i not in chosen)
        keep.sort()
        held.sort()

        def subset(indices: list[int]) -> _Listing:
            return _Listing(
                [train.files[i] for i in indices],
                [train.tags[i] for i in indices],
                train.base,
                train.from_list,
                train.split_folders,
            )

        return subset(keep), subset(held)

    def _label_array(self, listing: _Listing, names: list[str], labelled: bool) -> np.ndarray:
        if not labelled:
            return np.full(len(listing.files), UNLABELLED, dtype=np.int64)
        index = {name: k for k, name in enumerate(names)}
        tags = [str(int(tag)) if listing.from_list and _is_integer(tag) else tag for tag in listing.tags]
        unknown = sorted({str(tag) for tag in tags if tag not in index})
        if unknown:
            raise UserError(
                f"{self.split} images of {self.root} have classes missing from train: "
                f"{', '.join(str(u) for u in unknown)}"
            )
        return np.array([index[tag] for tag in tags], dtype=np.int64)

    # -- reading -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.files)

    def describe_item(self, index: int) -> str:
        return str(self.files[index])

    def _read(self, index: int, reader: Callable[[Path], Any] = decode_image) -> Any:
        """``reader(file)`` of file ``index``, or None (counted, warned) if it cannot be read."""
        if index in self._bad:
            self.skipped_reads += 1
            return None
        try:
            return reader(self.files[index])
        except Exception as error:  # noqa: BLE001 (whatever the decoder raises, the file is unreadable)
            self._mark_unreadable(index, error)
            return None

    def _mark_unreadable(self, index: int, error: Exception) -> None:
        path = self.files[index]
        self._bad.add(index)
        self.bad_files.append(str(path))
        self.skipped_reads += 1
        warnings.warn(
            f"skipping unreadable image {path}: {type(error).__name__}: {error}", RuntimeWarning, stacklevel=5
        )

    def _readable(self, index: int, reader: Callable[[Path], Any] = decode_image) -> tuple[int, Any]:
        """(item, ``reader``'s result) of the first readable item from ``index`` on, wrapping around."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            image = self._read(candidate, reader)
            if image is not None:
                return candidate, image
        raise RuntimeError(f"no readable image in {self.root} ({len(self.bad_files)} unreadable files)")

    def encoded_item(self, index: int) -> dict[str, Tensor]:
        """:func:`read_for_device` of the first readable item from ``index`` on, plus ``"label"`` and
        ``"file"`` (int64 (), the item read): what a worker sends with ``data.decode=device``."""
        candidate, payload = self._readable(index, read_for_device)
        return {**payload, "label": torch.tensor(self.labels[candidate]), "file": torch.tensor(candidate)}

    def known_unreadable(self, index: int) -> bool:
        """Whether file ``index`` already failed in this process."""
        return index in self._bad

    def replace_unreadable(self, index: int, error: Exception | None) -> dict[str, Tensor]:
        """The training process could not decode file ``index`` (``error``; None: it failed before):
        count it (and warn, naming it, the first time) as :meth:`full_item` counts an unreadable file,
        then give the full item of the next readable one, as :meth:`full_item` falls back."""
        if error is None or index in self._bad:
            self.skipped_reads += 1
        else:
            self._mark_unreadable(index, error)
        return self.full_item((index + 1) % len(self))

    def decode_encoded(
        self,
        data: list[Tensor],
        encoded: list[bool],
        orientation: list[int],
        files: list[int],
        device: torch.device | str,
    ) -> tuple[list[Tensor], dict[int, Tensor]]:
        """The training process's half of ``data.decode=device``: the images of a batch of
        :meth:`encoded_item` s, as uint8 (3, H, W) upright on ``device``, the JPEGs decoded batched
        (:func:`decode_jpegs`), the rest (decoded in the workers) moved there.

        A file that cannot be decoded is skipped and counted as the workers count it (:meth:`replace_unreadable`)
        and its item replaced by the next readable file: returns (images, {position in the batch: label of
        the replacement}); the crops of a replaced item are drawn again on its new image."""
        images: list[Tensor | None] = [None] * len(data)
        replaced: dict[int, Tensor] = {}

        def replace(position: int, error: Exception | None) -> None:
            item = self.replace_unreadable(files[position], error)
            images[position], replaced[position] = item["image"].to(device), item["label"]

        jpegs = []
        for position, (one, is_jpeg) in enumerate(zip(data, encoded, strict=True)):
            if not is_jpeg:
                images[position] = one.to(device, non_blocking=True)
            elif self.known_unreadable(files[position]):
                replace(position, None)
            else:
                jpegs.append(position)
        decoded = decode_jpegs([data[p] for p in jpegs], [orientation[p] for p in jpegs], device)
        for position, image in zip(jpegs, decoded, strict=True):
            if isinstance(image, Exception):
                replace(position, image)
            else:
                images[position] = image
        return images, replaced

    def full_item(self, index: int) -> dict[str, Tensor]:
        """``{"image": uint8 (3, H, W) at the decoded resolution, "label": int64 ()}``."""
        candidate, image = self._readable(index)
        return {"image": image, "label": torch.tensor(self.labels[candidate])}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        candidate, image = self._readable(index)
        return {"image": square_image(image, self.image_size), "label": torch.tensor(self.labels[candidate])}


@DATASETS.register(
    "imagefolder",
    ImageFolderConfig,
    description="your own images: train/<class>/ folders, any folder tree (unlabelled) or a file list",
)
def build_imagefolder(
    cfg: ImageFolderConfig, split: str, source: str, num_views: int, seed: int
) -> ImageFolderDataset:
    check_split_and_source(cfg.name, split, source)
    return ImageFolderDataset(
        data_root(cfg) if cfg.root or not cfg.file_list else None,
        split=split,
        image_size=cfg.image_size,
        labels=cfg.labels,
        file_list=cfg.file_list or None,
        val_file_list=cfg.val_file_list or None,
        val_fraction=cfg.val_fraction,
        full_images=cfg.crops == "full",
        decode=cfg.decode,
    )
