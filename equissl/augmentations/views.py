"""Turn a collated batch into the :class:`~equissl.types.Views` an objective asked for (its ViewSpec).

Batches (from the dataset collate, already on the training device):

- source ``"image"``: ``{"image": uint8 (B, 3, H, W), "label": (B,), "latent": (B, 7)}``;
- source ``"object"``: ``{"images": uint8 (B, k, 3, H, W), "label": (B,), "latents": (B, k, 7)}``,
  the k rendered views of each object.

Parameter units are those of :mod:`equissl.augmentations.image`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equissl.augmentations.image import ImageAugment, apply_params, identity_params
from equissl.config import AugmentConfig
from equissl.types import Views, ViewSpec


class ViewMaker(nn.Module):
    """``views = ViewMaker(cfg)(batch, spec, generator)``.

    source ``"image"``: ``spec.num_views`` independent global augmentations (``cfg.crop_size``,
    ``cfg.crop_scale``) of each image, plus ``spec.num_small`` small crops (``cfg.small_crop_size``,
    ``cfg.small_crop_scale``) in ``Views.small``; ``Views.latents`` is None.
    source ``"object"``: view i is made from rendered view i (the first ``spec.num_views`` of k); with
    ``cfg.object_views == "none"`` it is only resized to ``cfg.crop_size`` and normalised (its params are
    the identity: full-image box, no flip, identity jitter, no gray, no blur), with ``"full"`` it goes
    through the whole pipeline; small crops, if asked for, are cut from rendered view 0.
    ``Views.latents`` holds the (B, 7) latents of the views used.
    ``spec.shared_chunks`` is passed to every augmentation; labels are passed through.
    """

    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg
        self.global_augment = ImageAugment(cfg, cfg.crop_size, cfg.crop_scale)
        self.small_augment = ImageAugment(cfg, cfg.small_crop_size, cfg.small_crop_scale)

    def forward(
        self, batch: dict[str, Tensor], spec: ViewSpec, generator: torch.Generator | None = None
    ) -> Views:
        if spec.num_views < 1 or spec.num_small < 0:
            raise ValueError(f"ViewSpec needs num_views >= 1 and num_small >= 0, got {spec}")
        if spec.source == "image":
            return self._image_views(batch, spec, generator)
        if spec.source == "object":
            return self._object_views(batch, spec, generator)
        raise ValueError(f"unknown ViewSpec.source {spec.source!r}; expected 'image' or 'object'")

    def _small_views(
        self, images: Tensor, spec: ViewSpec, generator: torch.Generator | None
    ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        small = [self.small_augment(images, generator, spec.shared_chunks) for _ in range(spec.num_small)]
        return [view for view, _ in small], [params for _, params in small]

    def _image_views(
        self, batch: dict[str, Tensor], spec: ViewSpec, generator: torch.Generator | None
    ) -> Views:
        images = _require(batch, "image", 4)
        views = [self.global_augment(images, generator, spec.shared_chunks) for _ in range(spec.num_views)]
        small, small_params = self._small_views(images, spec, generator)
        return Views(
            images=[view for view, _ in views],
            params=[params for _, params in views],
            small=small,
            small_params=small_params,
            labels=batch.get("label"),
        )

    def _object_views(
        self, batch: dict[str, Tensor], spec: ViewSpec, generator: torch.Generator | None
    ) -> Views:
        rendered = _require(batch, "images", 5)
        latents = _require(batch, "latents", 3)
        if spec.num_views > rendered.shape[1]:
            raise ValueError(
                f"ViewSpec asks for {spec.num_views} views per object, the batch has {rendered.shape[1]}"
            )
        images, params = [], []
        for k in range(spec.num_views):
            view = rendered[:, k]
            if self.cfg.object_views == "full":
                out, view_params = self.global_augment(view, generator, spec.shared_chunks)
            else:
                view_params = identity_params(view.shape[0], view.shape[-2], view.shape[-1], view.device)
                out = apply_params(view, view_params, self.cfg, self.cfg.crop_size)
            images.append(out)
            params.append(view_params)
        small, small_params = self._small_views(rendered[:, 0], spec, generator)
        return Views(
            images=images,
            params=params,
            small=small,
            small_params=small_params,
            labels=batch.get("label"),
            latents=[latents[:, k] for k in range(spec.num_views)],
        )


def _require(batch: dict[str, Tensor], key: str, ndim: int) -> Tensor:
    if key not in batch:
        raise ValueError(
            f"batch lacks {key!r} (has {sorted(batch)}); does the dataset match ViewSpec.source?"
        )
    value = batch[key]
    if value.ndim != ndim:
        raise ValueError(f"batch[{key!r}] should have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value
