"""RandomResizedCrop from the full-resolution image, in the data workers.

Datasets of variable-size images (``imagefolder`` with ``data.crops=full``) expose ``full_item(index)``:
the decoded image at its own resolution. :class:`FullImageViews` wraps such a dataset for pretraining:
for every view of the objective's :class:`~equissl.types.ViewSpec` it draws a crop box on the full image
exactly as torchvision's ``RandomResizedCrop.get_params`` does (:func:`~equissl.augmentations.image.
sample_crop_boxes`: ``augment.crop_scale`` / ``crop_ratio`` for the global views, ``small_crop_scale``
for the small ones), cuts it and resizes it with antialiasing to ``augment.crop_size`` (small views:
``small_crop_size``). The rest of the augmentation (flip, jitter, grayscale, blur, normalisation) stays
batched on the training device, in the image view maker (:mod:`equissl.augmentations.views`).

Each box is drawn from its own generator seeded by (seed, epoch, index, view), so the crops depend on
neither the worker nor the order items are read in, and a resumed run cuts the same crops.

Items: ``{"views": float32 (V, 3, c, c) in [0, 1], "crops": float32 (V, 4), "small_views": float32
(S, 3, s, s), "small_crops": float32 (S, 4), "label": int64 ()}`` with V = ``spec.num_views``, S =
``spec.num_small``, c / s the crop sides; ``crops`` are x0, y0, x1, y1 in the original image's pixel
edges (the ``crop`` parameter of the views; their ``antialias`` parameter is 1). Re-applying a view's
parameters to the original image, ``apply_params(original[None], params, cfg, c)``, reproduces the view.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from equissl.augmentations.image import crop_resize_antialiased, sample_crop_boxes, to_float_image
from equissl.config import AugmentConfig
from equissl.types import ViewSpec


def view_generator(seed: int, epoch: int, index: int, view: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, index, view) through numpy's SeedSequence (independent
    streams for nearby tuples)."""
    state = np.random.SeedSequence([seed, epoch, index, view]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class FullImageViews(Dataset):
    """A dataset with ``full_item`` turned into items of crops cut from the full images (module docstring).

    dataset: exposes ``full_item(index) -> {"image": uint8 (3, H, W), "label"}``; cfg: the crop sizes,
    scales and ratio; spec: how many global and small views; seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, cfg: AugmentConfig, spec: ViewSpec, seed: int) -> None:
        if spec.source != "image":
            raise ValueError(f"full-image crops make views of one image, the spec asks for {spec}")
        if spec.shared_chunks:
            raise ValueError(
                "full-image crops are drawn per image; shared_chunks needs the resized fast path"
            )
        self.dataset, self.cfg, self.spec, self.seed = dataset, cfg, spec, seed
        self.epoch = 0
        self.groups = spec.crop_groups(cfg)  # (kind, count, side, scale), multi-crop or the two defaults
        for kind in ("global", "small"):
            sides = {side for k, count, side, _ in self.groups if k == kind and count}
            if len(sides) > 1:
                raise ValueError(
                    f"full-image crops stack the {kind} crops of an item, so they need one size; the spec "
                    f"asks for {sorted(sides)} (use data.crops=resized for crops of several sizes)"
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _draw_boxes(self, index: int, epoch: int, height: int, width: int) -> dict[str, list[Tensor]]:
        """{"global": [box (4,) per global view], "small": [...]} of item ``index`` in ``epoch`` on an image
        of height x width pixels: each box drawn by its own generator, so boxes can be drawn anywhere."""
        boxes: dict[str, list[Tensor]] = {"global": [], "small": []}
        for kind, count, _, scale in self.groups:
            for _ in range(count):
                # view numbers: the globals 0.., then the small ones (what the two-kind layout always used)
                view = len(boxes[kind]) + (self.spec.num_views if kind == "small" else 0)
                generator = view_generator(self.seed, epoch, index, view)
                ratio = tuple(self.cfg.crop_ratio)
                boxes[kind].append(sample_crop_boxes(1, height, width, tuple(scale), ratio, generator)[0])
        return boxes

    def _sides(self) -> dict[str, int]:
        """The crop side of each kind (one per kind, checked in ``__init__``)."""
        sides = {kind: size for kind, count, size, _ in self.groups if count}
        return {
            "global": sides.get("global", self.cfg.crop_size),
            "small": sides.get("small", self.cfg.small_crop_size),
        }

    def _cut(self, image: Tensor, boxes: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        """The crops of one image (uint8 (3, H, W), any device) at ``boxes`` (from :meth:`_draw_boxes`):
        ``views``, ``crops``, ``small_views``, ``small_crops`` of the item (module docstring)."""
        image = to_float_image(image[None])[0]
        sides = self._sides()
        out = {}
        for kind, key in (("global", "views"), ("small", "small_views")):
            side = sides[kind]
            crops = [crop_resize_antialiased(image, box, side) for box in boxes[kind]]
            out[key] = torch.stack(crops) if crops else image.new_zeros(0, 3, side, side)
            out[key.replace("views", "crops")] = torch.stack(boxes[kind]) if crops else torch.zeros(0, 4)
        return out

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.dataset.full_item(index)
        image = item["image"]
        return {
            **self._cut(image, self._draw_boxes(index, self.epoch, *image.shape[-2:])),
            "label": item["label"],
        }

    # The dataset's facts, for the trainer's fault accounting and the online probe.
    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @property
    def skipped_reads(self) -> int:
        return self.dataset.skipped_reads

    @property
    def bad_files(self) -> list[str]:
        return self.dataset.bad_files

    @property
    def root(self):
        return self.dataset.root

    def describe_item(self, index: int) -> str:
        return self.dataset.describe_item(index)


def collate_encoded(items: list[dict[str, Tensor]]) -> dict:
    """Collate :class:`DeviceDecodedViews` items: ``data`` (files' bytes, or decoded images, of any size)
    stays a list of B tensors, everything else is stacked."""
    batch: dict = {"data": [item["data"] for item in items]}
    batch.update({key: default_collate([item[key] for item in items]) for key in items[0] if key != "data"})
    return batch


class DeviceDecodedViews(FullImageViews):
    """:class:`FullImageViews` with the decoding moved to the training process (``data.decode=device``).

    The data workers read each file's bytes and header (the dataset's ``encoded_item``: JPEGs stay encoded,
    other formats are decoded there) and draw the crop boxes on the upright image size exactly as
    :class:`FullImageViews` does. Items: ``{"data": uint8 (N,) bytes or (3, H, W) pixels, "encoded": bool (),
    "orientation": int64 (), "size": int64 (2,), "file": int64 (), "index": int64 (), "epoch": int64 (),
    "crops": float32 (V, 4), "small_crops": float32 (S, 4), "label": int64 ()}``, collated by
    :func:`collate_encoded`. The training process then calls :meth:`finish_batch`, which decodes the batch's
    JPEGs on its device (the dataset's ``decode_encoded``) and cuts the crops there: the batch
    :class:`FullImageViews` gives, up to the JPEG decoders' differences.
    """

    collate_fn = staticmethod(collate_encoded)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.dataset.encoded_item(index)
        height, width = (int(side) for side in item["size"])
        boxes = self._draw_boxes(index, self.epoch, height, width)
        return {
            **item,
            "index": torch.tensor(index),
            "epoch": torch.tensor(self.epoch),
            "crops": torch.stack(boxes["global"]),
            "small_crops": torch.stack(boxes["small"]) if boxes["small"] else torch.zeros(0, 4),
        }

    def finish_batch(self, batch: dict, device: torch.device | str) -> dict[str, Tensor]:
        """A collated batch of worker items -> ``{"views": float32 (B, V, 3, c, c) on device, "crops": (B, V, 4),
        "small_views": (B, S, 3, s, s) on device, "small_crops": (B, S, 4), "label": (B,)}``.

        An item whose file the device cannot decode is replaced by the next readable file (counted in the
        dataset's ``skipped_reads``, as in the workers), its boxes drawn again on that image."""
        images, replaced = self.dataset.decode_encoded(
            batch["data"],
            batch["encoded"].tolist(),
            batch["orientation"].tolist(),
            batch["file"].tolist(),
            device,
        )
        labels = batch["label"].clone()
        items = []
        for position, image in enumerate(images):
            if position in replaced:
                index, epoch = int(batch["index"][position]), int(batch["epoch"][position])
                boxes = self._draw_boxes(index, epoch, *image.shape[-2:])
                labels[position] = replaced[position]
            else:
                boxes = {
                    "global": list(batch["crops"][position]),
                    "small": list(batch["small_crops"][position]),
                }
            items.append(self._cut(image, boxes))
        return {**{key: torch.stack([item[key] for item in items]) for key in items[0]}, "label": labels}
