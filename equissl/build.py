"""Composition from the registries: a validated :class:`~equissl.config.Config` -> the parts of a run.

The trainer, the evaluations, the export and the Python API all build through these functions, so that
a part is made the same way wherever it is used and no face needs the trainer to get an objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn
from torch.utils.data import Dataset

from equissl.augmentations.crops import DeviceDecodedViews, FullImageViews
from equissl.backbones.symmetry import symmetrize
from equissl.config import Config
from equissl.errors import ConfigError
from equissl.registry import BACKBONES, DATASETS, OBJECTIVES, VIEW_MAKERS
from equissl.ssl.base import Objective
from equissl.types import Views, ViewSpec


def build_backbone(config: Config, pretrained: bool = True) -> nn.Module:
    """The backbone of ``config.backbone`` (randomly initialised from torch's global RNG), wrapped for
    ``backbone.frame`` / ``backbone.canonicalizer`` (:mod:`equissl.backbones.symmetry`): the one place
    where any registered image backbone gets them.

    ``pretrained=False`` skips ``backbone.pretrained_file`` (a run's checkpoint supplies the weights).
    """
    cfg = config.backbone
    if not pretrained and getattr(cfg, "pretrained_file", ""):
        cfg = dataclasses.replace(cfg, pretrained_file="")
    return symmetrize(BACKBONES.build(cfg.name, cfg), cfg)


def build_objective(config: Config, pretrained: bool = True) -> Objective:
    """The objective of ``config.objective`` around a new backbone of ``config.backbone``."""
    return OBJECTIVES.build(config.objective.name, config.objective, build_backbone(config, pretrained))


def build_dataset(
    config: Config,
    split: str,
    source: str = "image",
    num_views: int = 1,
    seed: int | None = None,
    spec: ViewSpec | None = None,
) -> Dataset:
    """The ``split`` of ``config.data`` read for a view source (``"image"``: one image per item).

    With ``spec`` (pretraining), a dataset of variable-size images that asks for crops from the full
    image (``full_images``) is wrapped so that the data workers cut each view's crop from the decoded
    full-resolution image (:mod:`equissl.augmentations.crops`); CARE's batch-shared parameters
    (``spec.shared_chunks``) need one frame for the whole chunk and keep the resized fast path. With
    ``data.decode=device`` the workers only read the files and the trainer decodes them on its device
    (:class:`~equissl.augmentations.crops.DeviceDecodedViews`).
    """
    seed = config.trainer.seed if seed is None else seed
    dataset = DATASETS.build(
        config.data.name, config.data, split=split, source=source, num_views=num_views, seed=seed
    )
    if spec is None or not getattr(dataset, "full_images", False):
        return dataset
    on_device = getattr(dataset, "decode", "workers") == "device"
    if spec.shared_chunks:
        if on_device:
            raise ConfigError(
                f"data.decode=device cuts crops from the full images; objective {config.objective.name}'s "
                "batch-shared augmentations (shared_chunks) read the resized images: set data.decode=workers"
            )
        return dataset
    return (DeviceDecodedViews if on_device else FullImageViews)(dataset, config.augment, spec, seed)


def build_view_maker(config: Config, spec: ViewSpec) -> Callable[..., Views]:
    """The registered view maker of ``spec.source``, bound to ``spec``: ``maker(batch, generator)``."""
    return VIEW_MAKERS.build(spec.source, config, spec)
