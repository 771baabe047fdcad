"""Natural-image datasets read from their real on-disk formats: ``cifar10``, ``cifar100``, ``stl10`` (the
user's own folders, ``imagefolder``, are read by :mod:`equissl.datasets.folders`). Nothing is downloaded; ``data.root`` (default ``$EQUISSL_DATA/<name>``) must hold the files.

Layouts (the files as their authors distribute them, extracted):

- ``cifar10``: ``root/cifar-10-batches-py/`` (or ``root`` itself) with the pickled batches
  ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch`` (val) and ``batches.meta``. Each batch is a
  dict with ``b"data"``: uint8 (N, 3072), per row 1024 red, 1024 green, 1024 blue values, each a row-major
  32x32 plane; ``b"labels"``: N ints in [0, 10).
- ``cifar100``: ``root/cifar-100-python/`` (or ``root``) with ``train``, ``test`` (val) and ``meta``;
  the same ``b"data"`` layout and ``b"fine_labels"`` in [0, 100) (the coarse labels are not used).
- ``stl10``: ``root/stl10_binary/`` (or ``root``) with ``train_X.bin`` / ``train_y.bin``, ``test_X.bin`` /
  ``test_y.bin`` (val) and ``unlabeled_X.bin``. ``*_X.bin``: uint8 images of 3 x 96 x 96, each channel
  stored column-major (the byte of (channel c, row r, column k) of image n is at
  ``n * 27648 + c * 9216 + k * 96 + r``); ``*_y.bin``: one uint8 label in 1..10 per image, read as 0..9.
  ``data.train_split`` picks what split ``"train"`` holds: ``train`` (5,000 labelled), ``unlabeled``
  (100,000) or ``train+unlabeled``; unlabelled images carry label -1.

Items (view source ``"image"`` only: these datasets have no object views or latents):
    ``{"image": uint8 (3, image_size, image_size), "label": int64 ()}``
Images are resized (antialiased) so that the shorter side is ``image_size``, then centre-cropped square.
Split ``"val"`` is the official test set of CIFAR and STL-10.

CIFAR and STL-10 are validated as a whole when opened (their files hold every image, so there is no
single unreadable image to skip).

CIFAR batches are pickles: they are read by an unpickler that only admits numpy's array reconstruction,
so a tampered file cannot execute code.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from equissl.config import DataConfig
from equissl.datasets.ie3d import data_root
from equissl.errors import ConfigError, UserError
from equissl.registry import DATASETS

SPLITS = ("train", "val")
UNLABELLED = -1


@dataclass
class CIFAR10Config(DataConfig):
    name: str = "cifar10"
    image_size: int = 32


@dataclass
class CIFAR100Config(DataConfig):
    name: str = "cifar100"
    image_size: int = 32


@dataclass
class STL10Config(DataConfig):
    name: str = "stl10"
    image_size: int = 96
    # What split "train" (pretraining) holds; probes always train on the labelled train images.
    train_split: Literal["train", "unlabeled", "train+unlabeled"] = "train"


def check_split_and_source(dataset: str, split: str, source: str) -> None:
    if source != "image":
        raise ValueError(
            f"dataset {dataset!r} holds single images without object views or latents: view source "
            f"{source!r} is not available, only 'image' (pick an objective whose views are augmentations "
            "of one image, e.g. simclr or vicreg)"
        )
    if split not in SPLITS:
        raise ValueError(f"dataset {dataset!r}: split must be one of {SPLITS}, got {split!r}")


def square_image(image: Tensor, size: int) -> Tensor:
    """uint8 (3, H, W) -> (3, size, size): shorter side resized to ``size`` (antialiased), centre crop."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    image = TF.resize(image, [size], antialias=True)
    return TF.center_crop(image, [size, size])


def _dataset_folder(root: Path, folder: str, marker: str, what: str) -> Path:
    """``root/folder`` if it exists, else ``root`` itself when it holds ``marker``, else a ValueError."""
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).is_file():
        return root
    state = "does not exist" if not root.exists() else f"holds neither {folder}/ nor {marker}"
    raise UserError(
        f"{what} root {root} {state}: expected the extracted dataset, e.g. {root / folder / marker}"
    )


class _ArrayDataset(Dataset):
    """Images held in one array per source file: nothing to skip, so the fault counters stay empty."""

    num_classes: int
    class_names: list[str]

    def __init__(self, image_size: int) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.bad_files: list[str] = []
        self.skipped_reads = 0
        self.labels = np.zeros(0, dtype=np.int64)  # (N,), -1 for an unlabelled image
        self._parts: list[tuple[Path, int]] = []  # (source file, items) in item order
        self._starts = np.zeros(1, dtype=np.int64)

    def _set_parts(self, parts: list[tuple[Path, int]]) -> None:
        self._parts = parts
        self._starts = np.cumsum([0] + [count for _, count in parts])

    def __len__(self) -> int:
        return len(self.labels)

    def locate(self, index: int) -> tuple[int, int]:
        """(part, position inside that part's file) of item ``index``."""
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return part, index - int(self._starts[part])

    def describe_item(self, index: int) -> str:
        part, position = self.locate(index)
        return f"{self._parts[part][0]}, image {position}"

    def raw_image(self, index: int) -> Tensor:
        """uint8 (3, H, W) at the stored resolution."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image = square_image(self.raw_image(index), self.image_size)
        return {"image": image, "label": torch.tensor(self.labels[index], dtype=torch.int64)}


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python version).

_NUMPY_GLOBALS = {
    "_reconstruct": np.zeros(0).__reduce__()[0],
    "ndarray": np.ndarray,
    "dtype": np.dtype,
    "scalar": np.float64(0).__reduce__()[0],
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[name]
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 pickles bytes written by Python 3
            return codecs.encode
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only dicts, lists and numpy arrays"
        )


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR python batch as a dict with str keys (written by Python 2 with str keys or by Python 3
    with bytes keys; both read here)."""
    if not path.is_file():
        raise UserError(f"CIFAR file {path} is missing: expected a pickled batch of the python version")
    try:
        with open(path, "rb") as handle:
            entry = _ArrayUnpickler(handle, encoding="latin1").load()  # latin1: Python 2 numpy arrays
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
    ) as error:  # what a damaged pickle raises; name the file
        raise UserError(
            f"cannot read {path} as a CIFAR python batch: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(entry).__name__}")  # noqa: TRY004 (a bad file)
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _names(values: Any) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


@dataclass(frozen=True)
class CIFARLayout:
    title: str
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> batch files
    meta: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": CIFARLayout(
        "CIFAR-10",
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "val": ("test_batch",)},
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": CIFARLayout(
        "CIFAR-100",
        "cifar-100-python",
        {"train": ("train",), "val": ("test",)},
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
    ),
}


class CIFARDataset(_ArrayDataset):
    """CIFAR-10 or CIFAR-100 from the python pickles; see the module docstring.

    root: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or that folder itself).
    variant: ``"cifar10"`` or ``"cifar100"``. split: ``"train"`` or ``"val"`` (the test batch).
    """

    def __init__(
        self, root: str | Path, variant: str = "cifar10", split: str = "train", image_size: int = 32
    ) -> None:
        super().__init__(image_size)
        if variant not in CIFAR_LAYOUTS:
            raise ValueError(f"variant must be one of {sorted(CIFAR_LAYOUTS)}, got {variant!r}")
        check_split_and_source(variant, split, "image")
        layout = CIFAR_LAYOUTS[variant]
        self.root = _dataset_folder(
            Path(root).expanduser(), layout.folder, layout.files[split][0], layout.title
        )
        self.split, self.num_classes = split, layout.num_classes
        paths = [self.root / name for name in layout.files[split]]
        for path in [*paths, self.root / layout.meta]:  # every file named before any is read
            if not path.is_file():
                expected = ", ".join([*(layout.files["train"] + layout.files["val"]), layout.meta])
                raise UserError(f"{layout.title} file {path} is missing: {self.root} should hold {expected}")
        images, labels = [], []
        for path in paths:
            data, batch_labels = self._read_batch(path, layout)
            images.append(data)
            labels.append(batch_labels)
        self.images = np.concatenate(images).reshape(-1, 3, 32, 32)  # rows are R, G, B row-major planes
        self.labels = np.concatenate(labels)
        self._set_parts([(path, len(batch)) for path, batch in zip(paths, labels)])
        meta = read_cifar_pickle(self.root / layout.meta)
        names = _names(meta.get(layout.names_key, ()))
        if len(names) != layout.num_classes:
            raise UserError(
                f"{self.root / layout.meta}: expected {layout.num_classes} names under {layout.names_key!r}, "
                f"got {len(names)}"
            )
        self.class_names = names

    @staticmethod
    def _read_batch(path: Path, layout: CIFARLayout) -> tuple[np.ndarray, np.ndarray]:
        entry = read_cifar_pickle(path)
        if "data" not in entry or layout.label_key not in entry:
            raise ValueError(f"{path}: expected keys b'data' and b'{layout.label_key}', got {sorted(entry)}")
        data = np.asarray(entry["data"])
        labels = np.asarray(entry[layout.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ConfigError(
                f"{path}: expected b'data' uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
            )
        if labels.shape != (len(data),):
            raise ValueError(f"{path}: {len(data)} images but {labels.size} {layout.label_key}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < layout.num_classes:
            raise ValueError(f"{path}: {layout.label_key} outside [0, {layout.num_classes})")
        return data, labels

    def raw_image(self, index: int) -> Tensor:
        return torch.from_numpy(self.images[index].copy())


# ----------------------------------------------------------------------------------------------------
# STL-10 (binary version).

STL_SIDE = 96
STL_IMAGE_BYTES = 3 * STL_SIDE * STL_SIDE
STL_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
    "val": ("test_X.bin", "test_y.bin"),
}


class STL10Dataset(_ArrayDataset):
    """STL-10 from ``stl10_binary``; images are memory-mapped (the unlabeled file is 2.6 GB).

    root: the folder holding ``stl10_binary`` (or that folder itself). split: ``"train"`` or ``"val"``
    (the test set). train_split: what ``"train"`` holds: ``"train"``, ``"unlabeled"`` or
    ``"train+unlabeled"`` (train first).
    """

    def __init__(
        self, root: str | Path, split: str = "train", image_size: int = 96, train_split: str = "train"
    ) -> None:
        super().__init__(image_size)
        check_split_and_source("stl10", split, "image")
        if train_split not in ("train", "unlabeled", "train+unlabeled"):
            raise UserError(f"train_split must be train, unlabeled or train+unlabeled, got {train_split!r}")
        self.root = _dataset_folder(Path(root).expanduser(), "stl10_binary", STL_FILES[split][0], "STL-10")
        self.split, self.train_split = split, train_split
        part_names = train_split.split("+") if split == "train" else ["val"]
        parts, labels = [], []
        for name in part_names:
            images_file, labels_file = STL_FILES[name]
            count = self._count_images(self.root / images_file)
            labels.append(
                self._read_labels(self.root / labels_file, count)
                if labels_file
                else np.full(count, UNLABELLED, dtype=np.int64)
            )
            parts.append((self.root / images_file, count))
        self._set_parts(parts)
        self.labels = np.concatenate(labels)
        # The trainer's online probe needs a label on every item: none when unlabelled images are mixed in.
        self.num_classes = 0 if "unlabeled" in part_names else 10
        names_file = self.root / "class_names.txt"
        self.class_names = (
            names_file.read_text().split() if names_file.is_file() else [str(k) for k in range(10)]
        )
        self._maps: list[np.memmap] | None = None

    @staticmethod
    def _count_images(path: Path) -> int:
        if not path.is_file():
            raise UserError(f"STL-10 file {path} is missing: expected uint8 images of 3x96x96 (column-major)")
        size = path.stat().st_size
        if size % STL_IMAGE_BYTES:
            raise ValueError(
                f"{path}: {size} bytes is not a whole number of 3x96x96 images ({STL_IMAGE_BYTES} bytes)"
            )
        return size // STL_IMAGE_BYTES

    @staticmethod
    def _read_labels(path: Path, count: int) -> np.ndarray:
        if not path.is_file():
            raise UserError(f"STL-10 file {path} is missing: expected one uint8 label in 1..10 per image")
        labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
        if len(labels) != count:
            raise ValueError(f"{path}: {len(labels)} labels for {count} images")
        if len(labels) and not 1 <= labels.min() <= labels.max() <= 10:
            raise ValueError(f"{path}: labels outside 1..10")
        return labels - 1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = None  # workers map the files themselves rather than receiving copies
        return state

    def raw_image(self, index: int) -> Tensor:
        if self._maps is None:
            self._maps = [
                np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, STL_SIDE, STL_SIDE))
                for path, count in self._parts
            ]
        part, position = self.locate(index)
        # Stored (channel, column, row): transpose the planes to (channel, row, column).
        return torch.from_numpy(np.ascontiguousarray(self._maps[part][position].transpose(0, 2, 1)))

    def labelled_split(self) -> STL10Dataset:
        """This split without unlabelled images (what probes train on): the labelled train images."""
        if self.num_classes:
            return self
        return STL10Dataset(self.root, self.split, self.image_size, train_split="train")


# ----------------------------------------------------------------------------------------------------
# Registry entries.


@DATASETS.register("cifar10", CIFAR10Config, description="CIFAR-10 (python pickle format)")
def build_cifar10(cfg: CIFAR10Config, split: str, source: str, num_views: int, seed: int) -> CIFARDataset:
    check_split_and_source(cfg.name, split, source)
    return CIFARDataset(data_root(cfg), "cifar10", split=split, image_size=cfg.image_size)


@DATASETS.register("cifar100", CIFAR100Config, description="CIFAR-100 (python pickle format)")
def build_cifar100(cfg: CIFAR100Config, split: str, source: str, num_views: int, seed: int) -> CIFARDataset:
    check_split_and_source(cfg.name, split, source)
    return CIFARDataset(data_root(cfg), "cifar100", split=split, image_size=cfg.image_size)


@DATASETS.register("stl10", STL10Config, description="STL-10 (binary format)")
def build_stl10(cfg: STL10Config, split: str, source: str, num_views: int, seed: int) -> STL10Dataset:
    check_split_and_source(cfg.name, split, source)
    return STL10Dataset(data_root(cfg), split=split, image_size=cfg.image_size, train_split=cfg.train_split)


def __getattr__(name: str):
    """``ImageFolderDataset`` / ``ImageFolderConfig`` moved to :mod:`equissl.datasets.folders`; kept
    importable from here for code written before."""
    if name in ("ImageFolderDataset", "ImageFolderConfig"):
        from equissl.datasets import folders

        return getattr(folders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
