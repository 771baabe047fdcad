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
from torch.utils.data import Dataset

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

    def _cut(self, image: Tensor, index: int, view: int, size: int, scale) -> tuple[Tensor, Tensor]:
        """(crop (3, size, size) float, box (4,)) of ``view`` of item ``index``."""
        height, width = image.shape[-2:]
        generator = view_generator(self.seed, self.epoch, index, view)
        box = sample_crop_boxes(1, height, width, tuple(scale), tuple(self.cfg.crop_ratio), generator)[0]
        return crop_resize_antialiased(image, box, size), box

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.dataset.full_item(index)
        image = to_float_image(item["image"][None])[0]
        out: dict[str, list] = {"global": [], "small": []}
        for kind, count, size, scale in self.groups:
            for _ in range(count):
                # view numbers: the globals 0.., then the small ones (what the two-kind layout always used)
                view = len(out[kind]) + (self.spec.num_views if kind == "small" else 0)
                out[kind].append(self._cut(image, index, view, size, scale))
        views, small = out["global"], out["small"]
        side = next((size for kind, count, size, _ in self.groups if kind == "small" and count), 0)
        side = side or self.cfg.small_crop_size
        return {
            "views": torch.stack([crop for crop, _ in views]),
            "crops": torch.stack([box for _, box in views]),
            "small_views": torch.stack([c for c, _ in small]) if small else torch.zeros(0, 3, side, side),
            "small_crops": torch.stack([b for _, b in small]) if small else torch.zeros(0, 4),
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
