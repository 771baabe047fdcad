"""Reader for datasets in 3DIEBench's format (the real benchmark, or ``shapes3d`` renders).

On disk (see :mod:`equissl.datasets.shapes3d.writer` for what was checked against facebookresearch/SIE):
``root/SYNSET/OBJ/image_k.jpg`` and ``latent_k.npy`` (7 floats: extrinsic xyz Euler angles in radians,
floor hue, light theta, light phi, light hue), plus the index files ``{split}_images.npy`` (unicode
paths ``"/SYNSET/OBJ"``) and ``{split}_labels.npy`` (integer labels) for split ``train`` / ``val``, in
``index_dir`` (default: the root). An optional ``class_names.json`` ({synset: name}) names the classes.

Items (``source="image"``, one per (object, view), object-major):
    ``{"image": uint8 (3, H, W), "label": int64 (), "latent": float32 (7,)}``
Items (``source="object"``, one per object): ``num_views`` distinct views drawn without replacement by a
generator seeded from (seed, epoch, index), so a resumed run sees the same views:
    ``{"images": uint8 (num_views, 3, H, W), "label": int64 (), "latents": float32 (num_views, 7)}``

An unreadable view is skipped with a warning naming the file and the reason, and recorded in ``dataset.bad_files`` (per process: DataLoader workers keep their own lists); the item
falls back deterministically to the next readable view or object. Unreadable: a JPEG that does not decode,
a latent file that is missing, not shape (7,), not finite, or out of range (Euler angles outside
[-pi, pi], hues outside [0, 1]: :func:`equissl.latents.latent_problem`). ``dataset.skipped_reads`` counts every
skip, including repeats of a known-bad view, so the trainer can count bad reads per item across workers.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from equissl.config import DataConfig
from equissl.errors import UserError
from equissl.latents import latent_problem
from equissl.registry import DATASETS

SPLITS = ("train", "val")


@dataclass
class IE3DConfig(DataConfig):
    name: str = "3diebench"
    views_per_object: int = 50  # rendered views in every object folder (image_0 .. image_{n-1})
    index_dir: str = ""  # folder of {split}_images.npy / {split}_labels.npy; empty: the data root


def data_root(cfg: DataConfig) -> Path:
    """``cfg.root`` if set, else ``$EQUISSL_DATA/<name>``, else ``~/.cache/equissl/<name>``."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    base = os.environ.get("EQUISSL_DATA")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "equissl") / cfg.name


class _UnreadableView(Exception):
    pass


def _load_index(index_dir: Path, split: str) -> tuple[list[str], np.ndarray]:
    images_file, labels_file = index_dir / f"{split}_images.npy", index_dir / f"{split}_labels.npy"
    for path, what in ((images_file, 'object paths "/SYNSET/OBJ"'), (labels_file, "integer class labels")):
        if not path.is_file():
            raise UserError(
                f"3DIEBench index file {path} is missing: expected a .npy array of {what} for split {split!r}"
            )
    try:
        paths = np.load(images_file, allow_pickle=False)
        labels = np.load(labels_file, allow_pickle=False)
    except ValueError as error:
        raise UserError(
            f"cannot read the index files in {index_dir} without unpickling ({error}); "
            "expected plain numpy string and integer arrays"
        ) from None
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise UserError(f"{images_file}: expected a 1-D array of strings, got {paths.dtype} {paths.shape}")
    if labels.shape != paths.shape or labels.dtype.kind not in "iu":
        raise UserError(
            f"{labels_file}: expected {len(paths)} integer labels, got {labels.dtype} {labels.shape}"
        )
    objects = [str(p.decode() if isinstance(p, bytes) else p).strip("/") for p in paths]
    return objects, labels.astype(np.int64)


class IE3DDataset(Dataset):
    """3DIEBench-format dataset; see the module docstring for items and failure handling.

    root: the dataset folder. split: ``"train"`` or ``"val"``. source: ``"image"`` or ``"object"``.
    num_views: views per item for ``source="object"``. seed: seeds the view choice (with the epoch and
    the index). image_size: output side in pixels (antialiased resize). views_per_object: views in each
    object folder. index_dir: where the index files live (default ``root``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        source: str = "image",
        num_views: int = 2,
        seed: int = 0,
        image_size: int = 64,
        views_per_object: int = 50,
        index_dir: str | Path | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(
                f"3DIEBench root {self.root} does not exist: expected a folder holding "
                "SYNSET/OBJ/image_k.jpg and latent_k.npy"
            )
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if source not in ("image", "object"):
            raise ValueError(f"source must be 'image' or 'object', got {source!r}")
        if views_per_object < 1 or image_size < 1:
            raise ValueError("views_per_object and image_size must be >= 1")
        if source == "object" and not 1 <= num_views <= views_per_object:
            raise ValueError(
                f"num_views must be in [1, {views_per_object}] (views per object), got {num_views}"
            )
        self.index_dir = Path(index_dir).expanduser() if index_dir else self.root
        self.split, self.source, self.num_views, self.seed = split, source, num_views, seed
        self.image_size, self.views_per_object = image_size, views_per_object
        self.objects, self.labels = _load_index(self.index_dir, split)
        if not self.objects:
            raise UserError(f"{self.index_dir / f'{split}_images.npy'} lists no objects")
        self.epoch = 0
        self.bad_files: list[str] = []
        self.skipped_reads = 0
        self._bad_views: set[tuple[int, int]] = set()
        self._init_classes()

    def _init_classes(self) -> None:
        synset_of_label: dict[int, str] = {}
        label_sets = [(self.objects, self.labels)]
        other = "val" if self.split == "train" else "train"
        if (self.index_dir / f"{other}_images.npy").is_file():  # so both splits agree on num_classes
            label_sets.append(_load_index(self.index_dir, other))
        for objects, labels in label_sets:
            for path, label in zip(objects, labels):
                synset_of_label.setdefault(int(label), path.split("/")[0])
        names_file = next(
            (
                d / "class_names.json"
                for d in (self.root, self.index_dir)
                if (d / "class_names.json").is_file()
            ),
            None,
        )
        names = json.loads(names_file.read_text()) if names_file else {}
        self.num_classes = max(synset_of_label) + 1
        self.synsets = [synset_of_label.get(k, "") for k in range(self.num_classes)]
        self.class_names = [names.get(s, s) for s in self.synsets]

    # -- indexing ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.objects) * (self.views_per_object if self.source == "image" else 1)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def locate(self, index: int) -> tuple[int, int]:
        """(object index, view) of image-mode item ``index``."""
        return divmod(index, self.views_per_object)

    def set_epoch(self, epoch: int) -> None:
        """Select the views of ``source="object"`` items for ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def describe_item(self, index: int) -> str:
        """Where item ``index`` is read from, for error messages."""
        object_index = self.locate(index)[0] if self.source == "image" else index
        folder = self.root / self.objects[object_index]
        return str(folder / f"image_{self.locate(index)[1]}.jpg") if self.source == "image" else str(folder)

    def view_paths(self, object_index: int) -> list[Path]:
        """Image files of every view of an object, in view order."""
        folder = self.root / self.objects[object_index]
        return [folder / f"image_{k}.jpg" for k in range(self.views_per_object)]

    # -- loading -------------------------------------------------------------------------------------

    def _load_view(self, object_index: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
        if (object_index, view) in self._bad_views:
            self.skipped_reads += 1
            raise _UnreadableView
        folder = self.root / self.objects[object_index]
        path = folder / f"image_{view}.jpg"
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
            path = folder / f"latent_{view}.npy"
            stored = np.load(path, allow_pickle=False)
            problem = latent_problem(stored)
            if problem is not None:
                raise ValueError(problem)
            latent = stored.astype(np.float32)
        except (OSError, RuntimeError, ValueError) as error:
            self._bad_views.add((object_index, view))
            self.bad_files.append(str(path))
            self.skipped_reads += 1
            warnings.warn(f"skipping unreadable view {path}: {error}", RuntimeWarning, stacklevel=3)
            raise _UnreadableView from None
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = TF.resize(image, [self.image_size, self.image_size], antialias=True)
        return image, torch.from_numpy(latent)

    def view_order(self, index: int) -> np.ndarray:
        """Views of object ``index`` in the order ``source="object"`` tries them this epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return rng.permutation(self.views_per_object)

    def _object_item(self, index: int) -> dict[str, torch.Tensor] | None:
        images, latents = [], []
        for view in self.view_order(index):
            try:
                image, latent = self._load_view(index, int(view))
            except _UnreadableView:
                continue
            images.append(image)
            latents.append(latent)
            if len(images) == self.num_views:
                return {
                    "images": torch.stack(images),
                    "label": torch.tensor(self.labels[index]),
                    "latents": torch.stack(latents),
                }
        return None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        for offset in range(len(self)):  # the next readable item, deterministically
            candidate = (index + offset) % len(self)
            if self.source == "object":
                item = self._object_item(candidate)
                if item is not None:
                    return item
                continue
            object_index, view = self.locate(candidate)
            try:
                image, latent = self._load_view(object_index, view)
            except _UnreadableView:
                continue
            return {"image": image, "label": torch.tensor(self.labels[object_index]), "latent": latent}
        raise RuntimeError(f"no readable item in {self.root} ({len(self.bad_files)} unreadable files)")

    def object_views(self, object_index: int) -> dict[str, torch.Tensor]:
        """Every readable view of one object (for retrieval metrics):
        ``{"images": uint8 (V, 3, H, W), "latents": float32 (V, 7), "views": int64 (V,), "label"}``."""
        images, latents, views = [], [], []
        for view in range(self.views_per_object):
            try:
                image, latent = self._load_view(object_index, view)
            except _UnreadableView:
                continue
            images.append(image)
            latents.append(latent)
            views.append(view)
        if not views:
            raise RuntimeError(f"no readable view of {self.root / self.objects[object_index]}")
        return {
            "images": torch.stack(images),
            "latents": torch.stack(latents),
            "views": torch.tensor(views, dtype=torch.int64),
            "label": torch.tensor(self.labels[object_index]),
        }


@DATASETS.register(
    "3diebench", IE3DConfig, description="3DIEBench (Garrido et al. 2023), read from data.root"
)
def build_3diebench(cfg: IE3DConfig, split: str, source: str, num_views: int, seed: int) -> IE3DDataset:
    return IE3DDataset(
        data_root(cfg),
        split=split,
        source=source,
        num_views=num_views,
        seed=seed,
        image_size=cfg.image_size,
        views_per_object=cfg.views_per_object,
        index_dir=cfg.index_dir or None,
    )
