"""E-SSL (Dangovski et al., ICLR 2022): ``base loss + lambda * four-fold rotation prediction``, on any base.

``objective: {name: essl, base: simclr|simsiam|barlowtwins|byol|mocov3|dino|vicreg, rotation_weight: ...}``.
The section takes every key of the base's own section (its heads, temperature, momentum...) plus the
rotation term's; ``base`` picks the class that types it (``ESSLConfig.config_for``), so ``base: simclr``
(the default) is the original E-SimCLR, unchanged.

Every sample gets one more small crop, the last of ``views.small`` (``augment.small_crop_size`` /
``small_crop_scale``, after any small crops the base uses, e.g. DINO's local crops). It is rotated all four
ways by :func:`equissl.groups.rotate_four_ways` (a batch of 4B; label k = k quarter turns counter-clockwise
as displayed, ``torch.rot90(x, k, dims=(2, 3))``; k-major order: the B crops at 0 degrees, then the B at
90, ...), passed through the backbone as one batch, and a rotation classifier on the backbone features
predicts k. The base sees its views without that crop.

Default ``rotation_weight`` (lambda) per base, ``DEFAULT_ROTATION_WEIGHTS``:

- simclr 0.4: the paper and the official code (CIFAR-10 and ImageNet, ``--rotation 0.4``);
- simsiam 0.08: the official ImageNet E-SimSiam README (``--rotation 0.08``);
- barlowtwins 8: the official ImageNet E-BT README (``--rotation 8``; Barlow Twins' loss is a sum over
  the 8192 x 8192 cross-correlation, far larger than SimCLR's);
- byol 0.32: not published. BYOL's loss (``2 - 2 cos`` per direction, directions summed) has 4x the
  gradient of SimSiam's (``-cos / 2`` per direction), so 4 x SimSiam's published 0.08;
- mocov3 0.4, dino 0.4, vicreg 0.4: not published; SimCLR's value, untuned (MoCo v3's InfoNCE is SimCLR's
  family; DINO's cross entropy between distributions is of the same order). The equal-time table in
  docs/objectives.md reports whether the term helps each base at these weights.

Fidelity notes (rdangovs/essl, which the paper points to for its details):
- Labels and order as the official ``rotate_images`` (it builds the same four rotations with
  flips and transposes; k = 1 is ``images.flip(3).transpose(2, 3)`` = ``rot90(k=1)``). All four
  rotations of every crop are used, not one random rotation per crop.
- Rotation crop: official CIFAR-10 code, ``RandomResizedCrop(16, scale=(0.2, 1.0))`` (half the
  32 px resolution, same scale range, same flip / colour jitter / grayscale); ImageNet code
  ``RandomResizedCrop(96, scale=(0.05, 0.14))``. Set by ``augment.small_crop_size`` /
  ``augment.small_crop_scale`` (default 0.05-0.4; the shapes3d recipe sets the CIFAR 0.2-1.0, the range
  its measurement used).
- Rotation head: official CIFAR code 512-2048-2048-4 with LayerNorm + ReLU (our default,
  ``rotation_hidden_dims``); ImageNet code adds a 128-d LayerNorm bottleneck
  (``rotation_bottleneck_dim=128``).
- SimCLR base: the official code uses only other-view negatives (``same_view_negatives=False``),
  runs the views separately (``joint_forward=False``) and, on CIFAR, a 512-2048-2048 projector with a
  non-affine output BN (``proj_hidden_dim=2048, proj_out_dim=2048, proj_last_norm="bn_no_affine"``;
  without ``proj_hidden_dim`` the hidden layer keeps the backbone's 512, giving 512-512-2048; temperature 0.5;
  ImageNet: 2048-2048-128 with affine output BN, temperature 0.2). Our defaults are SimCLR's
  (E-SSL = SimCLR + rotation prediction), so that ``essl`` vs ``simclr`` isolates the rotation term; the
  same holds for every base (its defaults are its own).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from equissl.errors import ConfigError
from equissl.groups import rotate_four_ways
from equissl.heads.classifiers import RotationClassifier
from equissl.registry import OBJECTIVES
from equissl.ssl.barlowtwins import BarlowTwins
from equissl.ssl.base import Objective
from equissl.ssl.byol import BYOL
from equissl.ssl.dino import DINO
from equissl.ssl.losses import rotation_loss
from equissl.ssl.mocov3 import MoCoV3
from equissl.ssl.simclr import SimCLR, SimCLRConfig
from equissl.ssl.simsiam import SimSiam
from equissl.ssl.vicreg import VICReg
from equissl.types import CropGroup, StepOutput, Views, ViewSpec

NUM_ROTATIONS = 4
Base = Literal["simclr", "simsiam", "barlowtwins", "byol", "mocov3", "dino", "vicreg"]
BASES: tuple[str, ...] = Base.__args__  # type: ignore[attr-defined]
DEFAULT_ROTATION_WEIGHTS = {
    "simclr": 0.4,
    "simsiam": 0.08,
    "barlowtwins": 8.0,
    "byol": 0.32,
    "mocov3": 0.4,
    "dino": 0.4,
    "vicreg": 0.4,
}


def _select_config(data: dict[str, Any], path: str = "objective") -> type:
    """The config class of the section ``data`` (its ``base`` key), for :func:`equissl.config.from_dict`."""
    base = data.get("base", "simclr")
    if base not in BASES:
        raise ConfigError(f"{path}.base: expected one of {', '.join(BASES)}, got {base!r}")
    return essl_config_class(base)


@dataclass
class ESSLConfig(SimCLRConfig):
    """E-SSL on SimCLR (the registered config class); other bases get :func:`essl_config_class`."""

    name: str = "essl"
    base: Base = "simclr"
    rotation_weight: float = DEFAULT_ROTATION_WEIGHTS["simclr"]  # lambda
    rotation_hidden_dims: tuple[int, ...] = (2048, 2048)
    rotation_bottleneck_dim: int = 0  # 128: the official ImageNet head

    config_for = staticmethod(_select_config)


@functools.cache
def essl_config_class(base: str) -> type:
    """The config class of E-SSL on ``base``: the base's own config class plus ``name``, ``base`` and the
    rotation term's keys (its default weight from ``DEFAULT_ROTATION_WEIGHTS``)."""
    if base == "simclr":
        return ESSLConfig
    base_cls = OBJECTIVES.get(base).config_cls
    own = {
        f.name: f
        for f in dataclasses.fields(ESSLConfig)
        if f.name not in {g.name for g in dataclasses.fields(SimCLRConfig)}
    }
    fields = [
        ("name", str, dataclasses.field(default="essl")),
        ("base", Base, dataclasses.field(default=base)),
        ("rotation_weight", float, dataclasses.field(default=DEFAULT_ROTATION_WEIGHTS[base])),
        (
            "rotation_hidden_dims",
            tuple[int, ...],
            dataclasses.field(default=own["rotation_hidden_dims"].default),
        ),
        ("rotation_bottleneck_dim", int, dataclasses.field(default=own["rotation_bottleneck_dim"].default)),
    ]
    cls = dataclasses.make_dataclass(
        f"ESSL{base_cls.__name__}",
        fields,
        bases=(base_cls,),
        namespace={"config_for": staticmethod(_select_config)},
    )
    cls.__module__ = __name__
    return cls


def with_rotation_crop(spec: ViewSpec) -> ViewSpec:
    """``spec`` plus one small crop per sample (the last of ``Views.small``) for the rotation term."""
    if spec.crops:
        return dataclasses.replace(
            spec, num_small=spec.num_small + 1, crops=(*spec.crops, CropGroup("small", 1))
        )
    return dataclasses.replace(spec, num_small=spec.num_small + 1)


class RotationTerm:
    """Mixin that adds E-SSL's rotation-prediction term to an objective class (listed before it)."""

    def __init__(self, backbone: nn.Module, cfg=None) -> None:
        cfg = cfg or essl_config_class(getattr(self, "essl_base", "simclr"))()
        if cfg.rotation_weight < 0:
            raise ConfigError(f"objective.rotation_weight must be >= 0, got {cfg.rotation_weight}")
        super().__init__(backbone, cfg)  # the base reads its own keys of the E-SSL config
        self.cfg = cfg
        # ESSL (on SimCLR) states its spec, rotation crop included, as a class attribute (and SimCLR's
        # object views derive from it); on the other bases the crop is added to the base's spec here
        if "required_views" not in type(self).__dict__:
            self.required_views = with_rotation_crop(self.required_views)
        self.rotation_head = RotationClassifier(
            backbone.num_features, cfg.rotation_hidden_dims, NUM_ROTATIONS, cfg.rotation_bottleneck_dim
        )

    def forward(self, views: Views) -> StepOutput:
        if not views.small:
            raise ValueError("E-SSL needs a small crop per sample in views.small (ViewSpec num_small=1)")
        base_views = dataclasses.replace(views, small=views.small[:-1], small_params=views.small_params[:-1])
        out = super().forward(base_views)
        rotated, labels = rotate_four_ways(views.small[-1])
        logits = self.rotation_head(self.backbone(rotated))
        rotation = rotation_loss(logits, labels)
        metrics = dict(out.metrics)
        metrics["loss/rotation"] = rotation.detach()
        metrics["rotation_acc"] = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(
            loss=out.loss + self.cfg.rotation_weight * rotation, metrics=metrics, features=out.features
        )

    @torch.no_grad()
    def evaluation_metrics(self, images: Tensor) -> dict[str, Tensor]:
        """Per image, the fraction of its four rotations whose quarter-turn count is predicted right."""
        rotated, labels = rotate_four_ways(images)
        correct = (self.rotation_head(self.backbone(rotated)).argmax(dim=1) == labels).float()
        return {"rotation_acc": correct.view(NUM_ROTATIONS, -1).mean(0)}


class ESSL(RotationTerm, SimCLR):
    """E-SimCLR: SimCLR + rotation prediction."""

    essl_base = "simclr"
    required_views = ViewSpec(source="image", num_views=2, num_small=1)


BASE_CLASSES: dict[str, type] = {
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "barlowtwins": BarlowTwins,
    "byol": BYOL,
    "mocov3": MoCoV3,
    "dino": DINO,
    "vicreg": VICReg,
}


@functools.cache
def essl_objective_class(base: str) -> type:
    """The objective class of E-SSL on ``base``: :class:`RotationTerm` over the base's class."""
    if base == "simclr":
        return ESSL
    base_cls = BASE_CLASSES[base]
    return type(
        f"ESSL{base_cls.__name__}", (RotationTerm, base_cls), {"essl_base": base, "__module__": __name__}
    )


@OBJECTIVES.register(
    "essl",
    ESSLConfig,
    description="E-SSL (Dangovski et al. 2022): four-fold rotation prediction added to any base (objective.base)",
)
def build_essl(cfg: ESSLConfig, backbone: nn.Module) -> Objective:
    return essl_objective_class(cfg.base)(backbone, cfg)
