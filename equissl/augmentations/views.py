"""View makers of images: turn a collated batch into the :class:`~equissl.types.Views` an objective asked
for (its :class:`~equissl.types.ViewSpec`), registered in ``VIEW_MAKERS`` under the spec's ``source``.

Batches (from the dataset collate, already on the training device):

- source ``"image"``: ``{"image": uint8 (B, 3, H, W), "label": (B,), "latent": (B, 7)}``;
- source ``"object"``: ``{"images": uint8 (B, k, 3, H, W), "label": (B,), "latents": (B, k, 7)}``,
  the k rendered views of each object.

A view maker is built once per run, bound to the objective's spec: ``maker = VIEW_MAKERS.build(
spec.source, config, spec)``, then ``views = maker(batch, generator)``. Parameter units are those of
:mod:`equissl.augmentations.image`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from equissl.augmentations.image import ImageAugment, apply_params, identity_params
from equissl.config import AugmentConfig, Config
from equissl.registry import VIEW_MAKERS
from equissl.types import Views, ViewSpec


class _ImageViewsBase(nn.Module):
    """The augmentations both image view makers share: global views and E-SSL's small crops."""

    source = ""

    def __init__(self, cfg: AugmentConfig, spec: ViewSpec) -> None:
        super().__init__()
        if spec.source != self.source:
            raise ValueError(
                f"{type(self).__name__} makes source {self.source!r} views, spec asks for {spec}"
            )
        if spec.num_views < 1 or spec.num_small < 0:
            raise ValueError(f"ViewSpec needs num_views >= 1 and num_small >= 0, got {spec}")
        self.cfg, self.spec = cfg, spec
        self.global_augment = ImageAugment(cfg, cfg.crop_size, cfg.crop_scale)
        self.small_augment = ImageAugment(cfg, cfg.small_crop_size, cfg.small_crop_scale)

    def _small_views(
        self, images: Tensor, generator: torch.Generator | None
    ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        small = [
            self.small_augment(images, generator, self.spec.shared_chunks) for _ in range(self.spec.num_small)
        ]
        return [view for view, _ in small], [params for _, params in small]


class ImageViewMaker(_ImageViewsBase):
    """``spec.num_views`` independent global augmentations (``cfg.crop_size``, ``cfg.crop_scale``) of each
    image, plus ``spec.num_small`` small crops (``cfg.small_crop_size``, ``cfg.small_crop_scale``) in
    ``Views.small``; ``Views.latents`` is None. ``spec.shared_chunks`` is passed to every augmentation;
    labels are passed through."""

    source = "image"

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Views:
        images = _require(batch, "image", 4)
        views = [
            self.global_augment(images, generator, self.spec.shared_chunks)
            for _ in range(self.spec.num_views)
        ]
        small, small_params = self._small_views(images, generator)
        return Views(
            images=[view for view, _ in views],
            params=[params for _, params in views],
            small=small,
            small_params=small_params,
            labels=batch.get("label"),
        )


class ObjectViewMaker(_ImageViewsBase):
    """View i is made from rendered view i of the object (the first ``spec.num_views`` of k). With
    ``cfg.object_views == "none"`` it is only resized to ``cfg.crop_size`` and normalised (its params are
    the identity: full-image box, no flip, identity jitter, no gray, no blur); with ``"full"`` it goes
    through the whole pipeline. Small crops, if asked for, are cut from rendered view 0. ``Views.latents``
    holds the (B, 7) latents of the views used."""

    source = "object"

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Views:
        rendered = _require(batch, "images", 5)
        latents = _require(batch, "latents", 3)
        spec = self.spec
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
        small, small_params = self._small_views(rendered[:, 0], generator)
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


@VIEW_MAKERS.register("image", AugmentConfig)
def build_image_view_maker(config: Config, spec: ViewSpec) -> ImageViewMaker:
    """Augmentations of one image per sample (SimCLR, VICReg, E-SSL, CARE, seq-JEPA's augment actions)."""
    return ImageViewMaker(config.augment, spec)


@VIEW_MAKERS.register("object", AugmentConfig)
def build_object_view_maker(config: Config, spec: ViewSpec) -> ObjectViewMaker:
    """Distinct rendered views of one object with their latents (SIE, EquiCaps, seq-JEPA)."""
    return ObjectViewMaker(config.augment, spec)
