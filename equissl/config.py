"""Typed configuration: dataclass defaults <- YAML recipe <- ``key=value`` overrides.

Every key is checked against the dataclasses before any work starts. The ``data``, ``backbone`` and
``objective`` sections are *polymorphic*: their ``name`` picks a registry entry whose own config
dataclass then types the rest of the section. An unknown, misspelt or ill-typed key raises
:class:`ConfigError` naming the dotted key path and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from equissl.errors import ConfigError

# A plain decimal literal such as 2e-3, 1E5, .5 or -3.0 (no nan/inf: never a sensible setting).
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ----------------------------------------------------------------------------------------------------
# Sections. Polymorphic bases hold only ``name`` (and fields shared by every entry); registry entries
# subclass them.


@dataclass
class DataConfig:
    """Base of every dataset's config section."""

    name: str = "shapes3d"
    root: str = ""  # empty: $EQUISSL_DATA/<name>, else ~/.cache/equissl/<name>
    image_size: int = 64  # images are resized to image_size x image_size when read
    num_workers: int = 2
    # Unreadable / truncated / wrong-mode files are skipped and counted (over every worker and rank);
    # the run aborts once more than this fraction of the items read so far was bad.
    max_bad_fraction: float = 0.05

    def check(self, config: Config) -> None:
        """Cross-section checks of this entry against the rest of ``config`` (before any work starts);
        raise :class:`ConfigError` naming both keys. Default: none."""


@dataclass
class BackboneConfig:
    """Base of every backbone's config section."""

    name: str = "resnet18"

    def check(self, config: Config) -> None:
        """Cross-section checks of this entry against the rest of ``config`` (before any work starts);
        raise :class:`ConfigError` naming both keys. Default: none."""


@dataclass
class ObjectiveConfig:
    """Base of every objective's config section."""

    name: str = "simclr"

    def check(self, config: Config) -> None:
        """Cross-section checks of this entry against the rest of ``config`` (before any work starts);
        raise :class:`ConfigError` naming both keys. Default: none."""


@dataclass
class AugmentConfig:
    """Batched image augmentations (see :mod:`equissl.augmentations.image`)."""

    crop_size: int = 64  # output side of the global views, pixels
    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of RandomResizedCrop
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    small_crop_size: int = 32  # output side of the small crops (E-SSL), pixels
    small_crop_scale: tuple[float, float] = (0.05, 0.4)
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # How views of source="object" are augmented: "none" keeps the rendered view (only resized and
    # normalised, as SIE does on 3DIEBench); "full" applies the same pipeline as image views.
    object_views: Literal["none", "full"] = "none"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam", "lars"] = "adamw"
    lr: float = 1e-3  # base learning rate, for reference_batch images per step
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # scale lr by global_batch / reference_batch
    reference_batch: int = 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.02
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS adaptation) on biases and norms
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_minutes: float = 0.0  # >0: stop (and checkpoint) after this wall time; for equal-time comparisons
    batch_size: int = 128  # per process
    grad_accum_steps: int = 1
    # fp64 is for numerical checks (e.g. 1 vs N processes agreeing to 1e-10), not for training speed.
    precision: Literal["fp32", "bf16", "fp64"] = "fp32"
    clip_grad_norm: float = 0.0  # 0 disables clipping
    seed: int = 0
    run_dir: str = "runs/{name}"
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    online_probe: bool = True
    online_probe_lr: float = 1e-3
    progress: bool = True
    device: Literal["auto", "cpu"] = "auto"
    # BatchNorm statistics over the global batch when distributed (an all-gather BatchNorm that works on
    # every backend, gloo included: launch/sync_bn.py); off by default, as in most SSL recipes (per-GPU statistics).
    sync_batchnorm: bool = False
    # A non-finite loss or gradient norm stops the run (the batch is saved under nonfinite/); with
    # N > 0 up to N such optimizer steps are skipped (counted) before stopping.
    skip_nonfinite_steps: int = 0


@dataclass
class ProbeConfig:
    """Offline evaluation protocol (docs/evaluation.md, "Linear probe and kNN")."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-2
    weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)
    holdout_fraction: float = 0.1  # of train, to choose the weight decay
    knn_k: int = 20
    knn_temperature: float = 0.07


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.run_dir.format(name=self.name))


def _polymorphic_registries() -> dict[type, Any]:
    from equissl.registry import BACKBONES, DATASETS, OBJECTIVES

    return {DataConfig: DATASETS, BackboneConfig: BACKBONES, ObjectiveConfig: OBJECTIVES}


# ----------------------------------------------------------------------------------------------------
# Strict conversion of plain dicts into the dataclasses.


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}?"
    return f"valid keys: {', '.join(valid)}"


def _convert(value: Any, annotation: Any, path: str) -> Any:
    """Return ``value`` as ``annotation`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{path}: {value!r} fits none of {annotation} ({'; '.join(errors)})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 2e-3 (no dot) as a string; it is a number here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {annotation}")  # a bug in a config dataclass


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` (a dict), refusing unknown or ill-typed keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    registry = _polymorphic_registries().get(cls)
    if registry is not None:
        name = data.get("name", cls().name)
        try:
            cls = registry.get(name).config_cls
        except ValueError as error:
            raise ConfigError(f"{path}.name: {error}") from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {key_path!r}: {_suggest(str(key), list(fields))}")
        kwargs[key] = _convert(value, hints[key], key_path)
    polymorphic = _polymorphic_registries()
    for key in fields.keys() - kwargs.keys():
        if hints[key] in polymorphic:  # an absent section still gets its entry's typed defaults
            kwargs[key] = from_dict(hints[key], {}, f"{path}.{key}" if path else key)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# ----------------------------------------------------------------------------------------------------
# Recipes and overrides.


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, for example optim.lr=0.01")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {error}") from None
    return key.split("."), value


def set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: depth + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
    return data


def apply_overrides(
    tree: dict[str, Any], overrides: list[str] | tuple[str, ...], section: str = ""
) -> dict[str, Any]:
    """``tree`` (a plain dict) with ``key=value`` overrides set in place; returned for chaining.

    With ``section``, every key must read ``<section>.<key>`` (e.g. ``probe.epochs=50``) and is set
    below the section's name.
    """
    for text in overrides:
        keys, value = parse_override(text)
        if section:
            if keys[0] != section or len(keys) < 2:
                raise ConfigError(f"override {text!r}: only {section}.<key>=value settings are accepted here")
            keys = keys[1:]
        set_path(tree, keys, value)
    return tree


def parse_settings(
    cls: type, overrides: list[str] | tuple[str, ...] = (), base: Any = None, section: str = ""
) -> Any:
    """Typed settings ``cls`` (a config dataclass) from ``base`` (an instance, or ``cls``'s defaults) and
    ``key=value`` overrides, converted as strictly as a recipe: the one converter every command uses.

    ``section`` names the settings in messages and, when given, is the prefix every key must carry.
    """
    tree = apply_overrides(to_dict(base) if base is not None else {}, overrides, section)
    return from_dict(cls, tree, section)


def derive_sizes(config: Config, tree: dict[str, Any]) -> None:
    """Crop sizes follow ``data.image_size`` unless ``tree`` (what the recipe and overrides set) sets them:
    ``augment.crop_size`` defaults to the image size, ``augment.small_crop_size`` to half the crop, so that a
    new image size is one setting, not three."""
    given = tree.get("augment") or {}
    if "crop_size" not in given:
        config.augment.crop_size = config.data.image_size
    if "small_crop_size" not in given:
        config.augment.small_crop_size = max(1, config.augment.crop_size // 2)


def build_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- recipe file <- ``key=value`` overrides, validated as a whole."""
    tree = apply_overrides(load_recipe(recipe) if recipe else {}, overrides)
    config = from_dict(Config, tree)
    derive_sizes(config, tree)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    checks = [
        (config.trainer.max_steps > 0, "trainer.max_steps must be > 0"),
        (config.trainer.batch_size > 0, "trainer.batch_size must be > 0"),
        (config.trainer.grad_accum_steps > 0, "trainer.grad_accum_steps must be > 0"),
        (config.trainer.checkpoint_every > 0, "trainer.checkpoint_every must be > 0"),
        (config.trainer.keep_checkpoints > 0, "trainer.keep_checkpoints must be > 0"),
        (config.trainer.skip_nonfinite_steps >= 0, "trainer.skip_nonfinite_steps must be >= 0"),
        (0 <= config.data.max_bad_fraction <= 1, "data.max_bad_fraction must be in [0, 1]"),
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (config.data.image_size > 0, "data.image_size must be > 0"),
        (
            0 < config.augment.crop_scale[0] <= config.augment.crop_scale[1] <= 1,
            "augment.crop_scale must satisfy 0 < lo <= hi <= 1",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    augment, image_size = config.augment, config.data.image_size
    for key in ("crop_size", "small_crop_size"):
        if getattr(augment, key) > image_size:
            raise ConfigError(
                f"augment.{key}={getattr(augment, key)} > data.image_size={image_size}: every view would be "
                f"upsampled; set augment.{key} <= data.image_size (or raise data.image_size)"
            )
    for section in (config.data, config.backbone, config.objective):
        section.check(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
