"""A detection set in COCO format, the user's own data for ``equissl finetune-det --data
coco:ANNOTATIONS.json:IMAGES_DIR``.

The annotation file holds ``images`` (``id``, ``file_name`` relative to ``IMAGES_DIR``, ``width``,
``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` in pixels, optional
``iscrowd``) and ``categories`` (``id``, ``name``). Items are those of
:class:`~equissl.datasets.shapes3d_det.Shapes3DDetection`: ``(image uint8 (3, H, W), {"boxes": (K, 4)
float32 x0, y0, x1, y1 pixels, "labels": (K,) int64 in [1, C]})``, labels numbering the categories in
increasing id order (0 is torchvision's background). Crowd annotations (``iscrowd = 1``) are not
trained on but kept for the evaluation, where COCOeval ignores detections on them; boxes without area
are dropped (counted in ``dropped_boxes``). Images are read with torchvision (JPEG, PNG), as RGB.

:func:`coco_splits` gives the train and val sets: a second annotation file for val, or else a seeded
``val_fraction`` of the images held out.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from equissl.errors import UserError


def parse_coco_spec(spec: str) -> tuple[Path, Path]:
    """``coco:ANNOTATIONS.json:IMAGES_DIR`` -> (annotation file, image folder); both must exist."""
    if not spec.startswith("coco:") or spec.count(":") < 2:
        raise UserError(f"--data {spec!r}: expected shapes3d_det or coco:ANNOTATIONS.json:IMAGES_DIR")
    annotations, images = spec[len("coco:") :].split(":", 1)
    annotations, images = Path(annotations).expanduser(), Path(images).expanduser()
    if not annotations.is_file():
        raise UserError(f"--data {spec!r}: no annotation file at {annotations}")
    if not images.is_dir():
        raise UserError(f"--data {spec!r}: no image folder at {images}")
    return annotations, images


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable COCO annotation file ({error})") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise UserError(
            f"{path}: a COCO annotation file needs 'images', 'annotations' and 'categories'; "
            f"missing {', '.join(missing)}"
        )
    return data


class CocoDetection(Dataset):
    """The images ``image_ids`` (default: all, in id order) of a COCO-format annotation file."""

    def __init__(
        self,
        annotations: str | Path,
        images_dir: str | Path,
        image_ids: list[int] | None = None,
        categories: list[dict] | None = None,
    ) -> None:
        self.annotations_file, self.images_dir = Path(annotations), Path(images_dir)
        data = _load(self.annotations_file)
        # A val file labels its categories as the train file does (same ids -> same labels).
        categories = sorted(categories or data["categories"], key=lambda c: c["id"])
        self.categories = categories
        self.label_of = {c["id"]: k + 1 for k, c in enumerate(categories)}
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.num_classes = len(categories)
        images = {int(image["id"]): image for image in data["images"]}
        self.image_ids = sorted(images) if image_ids is None else list(image_ids)
        unknown = [i for i in self.image_ids if i not in images]
        if unknown:
            raise UserError(f"{self.annotations_file}: no image with id {unknown[0]}")
        self.images = [images[i] for i in self.image_ids]
        self.boxes: dict[int, list] = {i: [] for i in self.image_ids}
        self.crowd: dict[int, list] = {i: [] for i in self.image_ids}
        self.dropped_boxes = 0
        for ann in data["annotations"]:
            image_id = int(ann["image_id"])
            if image_id not in self.boxes:
                continue
            if ann["category_id"] not in self.label_of:
                raise UserError(
                    f"{self.annotations_file}: annotation {ann.get('id')} has unknown category "
                    f"{ann['category_id']}"
                )
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not (w > 0 and h > 0 and all(math.isfinite(v) for v in (x, y, w, h))):
                self.dropped_boxes += 1
                continue
            entry = ([x, y, x + w, y + h], self.label_of[ann["category_id"]])
            (self.crowd if ann.get("iscrowd", 0) else self.boxes)[image_id].append(entry)
        if self.dropped_boxes:
            warnings.warn(
                f"{self.annotations_file}: {self.dropped_boxes} boxes without area dropped", stacklevel=2
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def read_image(self, index: int) -> Tensor:
        path = self.images_dir / self.images[index]["file_name"]
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except (OSError, RuntimeError) as error:
            raise UserError(f"cannot read image {path}: {error}") from None

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        entries = self.boxes[self.image_ids[index]]
        boxes = torch.tensor([box for box, _ in entries], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
        return self.read_image(index), {"boxes": boxes, "labels": labels}

    def coco_ground_truth(self) -> dict:
        """The set as a COCO dict for COCOeval: image ids are item indices, category ids the labels
        1..C, crowd regions kept with ``iscrowd = 1``."""
        images, annotations = [], []
        for index, (image_id, image) in enumerate(zip(self.image_ids, self.images)):
            images.append({"id": index, "width": image.get("width"), "height": image.get("height")})
            for crowd, entries in ((0, self.boxes[image_id]), (1, self.crowd[image_id])):
                for (x0, y0, x1, y1), label in entries:
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": index,
                            "category_id": label,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": (x1 - x0) * (y1 - y0),
                            "iscrowd": crowd,
                        }
                    )
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}


def coco_splits(
    spec: str, val_spec: str | None = None, val_fraction: float = 0.2, seed: int = 0
) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) of a COCO-format set: ``val_spec`` (another ``coco:...``) as val, or else a seeded
    ``val_fraction`` of ``spec``'s images (at least one; at least one left to train on)."""
    annotations, images = parse_coco_spec(spec)
    if val_spec:
        train = CocoDetection(annotations, images)
        val_annotations, val_images = parse_coco_spec(val_spec)
        return train, CocoDetection(val_annotations, val_images, categories=train.categories)
    ids = sorted(int(image["id"]) for image in _load(annotations)["images"])
    if len(ids) < 2:
        raise UserError(f"{annotations}: a train / val split needs at least two images (or give --val-data)")
    held = max(1, min(len(ids) - 1, round(val_fraction * len(ids))))
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    val_ids = sorted(ids[i] for i in order[:held])
    train_ids = sorted(ids[i] for i in order[held:])
    return CocoDetection(annotations, images, train_ids), CocoDetection(annotations, images, val_ids)
