"""View makers of images: turn a collated batch into the :class:`~equissl.types.Views` an objective asked
for (its :class:`~equissl.types.ViewSpec`), registered in ``VIEW_MAKERS`` under the spec's ``source``.

Batches (from the dataset collate, already on the training device):

- source ``"image"``: ``{"image": uint8 (B, 3, H, W), "label": (B,), "latent": (B, 7)}``, or, for
  datasets of variable-size images, the crops already cut from the full images in the data workers
  (:mod:`equissl.augmentations.crops`): ``{"views": float (B, V, 3, c, c), "crops": (B, V, 4),
  "small_views": (B, S, 3, s, s), "small_crops": (B, S, 4), "label": (B,)}``;
- source ``"object"``: ``{"images": uint8 (B, k, 3, H, W), "label": (B,), "latents": (B, k, 7)}``,
  the k rendered views of each object.

A view maker is built once per run, bound to the objective's spec: ``maker = VIEW_MAKERS.build(
spec.source, config, spec)``, then ``views = maker(batch, generator)``. Parameter units are those of
:mod:`equissl.augmentations.image`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from equissl.augmentations.image import ImageAugment, apply_params, finish_view, identity_params
from equissl.config import AugmentConfig, Config
from equissl.errors import ConfigError
from equissl.registry import VIEW_MAKERS
from equissl.types import Views, ViewSpec

PER_VIEW_KEYS = {"view_blur_prob": "blur_prob", "view_solarize_prob": "solarize_prob"}


def view_config(cfg: AugmentConfig, index: int, num_views: int) -> AugmentConfig:
    """The settings of global view ``index`` of ``num_views``: ``cfg`` with that view's entries of
    ``augment.view_blur_prob`` / ``augment.view_solarize_prob`` where those are given (BYOL's asymmetric
    pair); a list of another length than the views is a :class:`ConfigError`."""
    changes = {}
    for key, shared_key in PER_VIEW_KEYS.items():
        values = getattr(cfg, key)
        if not values:
            continue
        if len(values) != num_views:
            raise ConfigError(
                f"augment.{key} has {len(values)} entries and the objective makes {num_views} global "
                f"views: give one probability per view, or none to use augment.{shared_key} for all"
            )
        changes[shared_key] = values[index]
    return dataclasses.replace(cfg, **changes) if changes else cfg


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
        # per crop group (multi-crop: each its own size and scale range), in spec order, the augmentation
        # of each of its crops; a global view's may have its own blur / solarisation probability
        crop_groups = spec.crop_groups(cfg)
        num_global = sum(count for kind, count, _, _ in crop_groups if kind == "global")
        global_configs = iter([view_config(cfg, i, num_global) for i in range(num_global)])
        self.groups: list[tuple[str, list[ImageAugment]]] = [
            (
                kind,
                [
                    ImageAugment(next(global_configs) if kind == "global" else cfg, size, scale)
                    for _ in range(count)
                ],
            )
            for kind, count, size, scale in crop_groups
        ]
        self.global_augments = [
            augment for kind, augments in self.groups if kind == "global" for augment in augments
        ]
        self.small_augments = [
            augment for kind, augments in self.groups if kind == "small" for augment in augments
        ]

    @staticmethod
    def _finish_cut(
        augment: ImageAugment, crops: Tensor, boxes: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Crops (B, 3, c, c) cut from the full images in the workers, boxes (B, 4) in original pixels ->
        (the view, its parameters): flip, jitter, grayscale and blur drawn here (the same count of random
        numbers as a fast-path view, whose crop draw is replaced by the workers' box), applied batched."""
        params = augment.sample_params(crops.shape[0], crops.shape[-2], crops.shape[-1], generator)
        params = {key: value.to(crops.device) for key, value in params.items()}
        params["crop"] = boxes.to(device=crops.device, dtype=torch.float32)
        params["antialias"] = torch.ones(crops.shape[0], device=crops.device)
        return finish_view(crops.float(), params, augment.cfg, augment.out_size), params

    def _cut_views(
        self, batch: dict[str, Tensor], generator: torch.Generator | None
    ) -> tuple[list, list, list, list]:
        """(views, params, small views, small params) of a batch of crops cut in the workers."""
        crops, boxes = _require(batch, "views", 5), _require(batch, "crops", 3)
        small_crops, small_boxes = _require(batch, "small_views", 5), _require(batch, "small_crops", 3)
        if crops.shape[1] < self.spec.num_views or small_crops.shape[1] < self.spec.num_small:
            raise ValueError(
                f"the batch holds {crops.shape[1]} + {small_crops.shape[1]} cut views, the spec asks for {self.spec}"
            )
        out: dict[str, list] = {"global": [], "small": []}
        cut = {"global": (crops, boxes), "small": (small_crops, small_boxes)}
        for kind, augments in self.groups:
            for augment in augments:
                k = len(out[kind])
                out[kind].append(self._finish_cut(augment, cut[kind][0][:, k], cut[kind][1][:, k], generator))
        return (*_unzip(out["global"]), *_unzip(out["small"]))

    def _group_views(
        self, images: Tensor, generator: torch.Generator | None
    ) -> tuple[list[Tensor], list[dict[str, Tensor]], list[Tensor], list[dict[str, Tensor]]]:
        """(global views, their params, small views, their params) of a batch (B, 3, H, W): each crop
        one batched augmentation of the whole batch at its group's size and scale, groups in spec order."""
        out: dict[str, list] = {"global": [], "small": []}
        for kind, augments in self.groups:
            out[kind].extend(augment(images, generator, self.spec.shared_chunks) for augment in augments)
        return (*_unzip(out["global"]), *_unzip(out["small"]))


class ImageViewMaker(_ImageViewsBase):
    """``spec.num_views`` independent global augmentations (``cfg.crop_size``, ``cfg.crop_scale``) of each
    image, plus ``spec.num_small`` small crops (``cfg.small_crop_size``, ``cfg.small_crop_scale``) in
    ``Views.small``; ``Views.latents`` is None. Multi-crop (``spec.crops``): each group's crops at its own
    size and scale range, globals in ``Views.images`` and the rest in ``Views.small`` in group order, each
    crop drawn and applied as one batched call over the batch (so crops of one size stack). ``spec.shared_chunks`` is passed to every augmentation;
    labels are passed through. A batch of crops cut from full images (``"views"``, module docstring) gets
    the rest of the pipeline; its views' ``crop`` parameters are the workers' boxes in original pixels."""

    source = "image"

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Views:
        if "views" in batch:
            images, params, small, small_params = self._cut_views(batch, generator)
            return Views(images, params, small, small_params, labels=batch.get("label"))
        images, params, small, small_params = self._group_views(_require(batch, "image", 4), generator)
        return Views(images, params, small, small_params, labels=batch.get("label"))


class ObjectViewMaker(_ImageViewsBase):
    """View i is made from rendered view i of the object (the first ``spec.num_views`` of k). With
    ``cfg.object_views == "none"`` it is only resized to ``cfg.crop_size`` and normalised (its params are
    the identity: full-image box, no flip, identity jitter, no gray, no blur); with ``"full"`` it goes
    through the whole pipeline. Small crops, if asked for, are cut from rendered view 0 (at their crop
    groups' sizes and scales). ``Views.latents`` holds the (B, 7) latents of the views used."""

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
                out, view_params = self.global_augments[k](view, generator, spec.shared_chunks)
            else:
                view_params = identity_params(view.shape[0], view.shape[-2], view.shape[-1], view.device)
                out = apply_params(view, view_params, self.cfg, self.cfg.crop_size)
            images.append(out)
            params.append(view_params)
        small, small_params = _unzip(
            [augment(rendered[:, 0], generator, spec.shared_chunks) for augment in self.small_augments]
        )
        return Views(
            images=images,
            params=params,
            small=small,
            small_params=small_params,
            labels=batch.get("label"),
            latents=[latents[:, k] for k in range(spec.num_views)],
        )


def _unzip(pairs: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """[(view, params), ...] from the augmentations -> ([views], [params])."""
    return [view for view, _ in pairs], [params for _, params in pairs]


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
