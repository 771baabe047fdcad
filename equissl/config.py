"""Typed configuration: dataclass defaults <- YAML recipe <- ``key=value`` overrides.

Every key is checked against the dataclasses before any work starts. The ``data``, ``backbone`` and
``objective`` sections are *polymorphic*: their ``name`` picks a registry entry whose own config
dataclass then types the rest of the section. An unknown, misspelt or ill-typed key raises
:class:`ConfigError` naming the dotted key path and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from equissl.errors import ConfigError

# A plain decimal literal such as 2e-3, 1E5, .5 or -3.0 (no nan/inf: never a sensible setting).
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ----------------------------------------------------------------------------------------------------
# Value ranges: ``Annotated[int | float, Range(...)]`` fields are checked when the config is built, so a
# negative size or a probability of 1.5 is refused before any work, naming the key and the valid range.


@dataclass(frozen=True)
class Range:
    """Closed (or, with ``low_open`` / ``high_open``, open) bounds of a numeric setting; None: unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1)]
Fraction = Annotated[float, Range(0, 1, low_open=True, high_open=True)]  # strictly between 0 and 1


# ----------------------------------------------------------------------------------------------------
# Sections. Polymorphic bases hold only ``name`` (and fields shared by every entry); registry entries
# subclass them.


@dataclass
class DataConfig:
    """Base of every dataset's config section."""

    name: str = "shapes3d"
    root: str = ""  # empty: $EQUISSL_DATA/<name>, else ~/.cache/equissl/<name>
    image_size: PositiveInt = 64  # images are resized to image_size x image_size when read
    num_workers: NonNegativeInt = 2
    prefetch_factor: PositiveInt = 2  # batches each worker keeps in flight (with num_workers > 0)
    # Unreadable / truncated / wrong-mode files are skipped and counted (over every worker and rank);
    # the run aborts once more than this fraction of the items read so far was bad, judged only after
    # min_items_before_abort items (or the whole dataset, if smaller) were read.
    max_bad_fraction: Probability = 0.05
    min_items_before_abort: NonNegativeInt = 1000

    def check(self, config: Config) -> None:
        """Cross-section checks of this entry against the rest of ``config`` (before any work starts);
        raise :class:`ConfigError` naming both keys. Default: none."""


@dataclass
class BackboneConfig:
    """Base of every backbone's config section.

    ``frame`` and ``canonicalizer`` make any image backbone exactly invariant (pooled features) and
    equivariant (spatial map) to a group acting on the pixel grid (:mod:`equissl.backbones.symmetry`,
    applied in :func:`equissl.build.build_backbone`); image backbones only.
    """

    name: str = "resnet18"
    # Frame averaging (Puny et al., ICLR 2022): the backbone sees every transform of the input in one
    # batch (|G| = 4 for c4, 8 for d4) and the outputs are averaged back: |G| times the compute.
    frame: Literal["none", "c4", "d4"] = "none"
    # Learned canonicalization (Mondal et al., NeurIPS 2023): a small steerable C_N / D_N network picks the
    # input's pose, the backbone sees the input turned back to it: about 1x the compute.
    canonicalizer: Literal["none", "c4", "c8", "d4"] = "none"
    canonicalizer_width: PositiveInt = 8  # fields per group element of the canonicalization network
    canonicalizer_layers: PositiveInt = 3  # its convolutions (the first lifts the image to the group)
    canonicalizer_kernel: Annotated[int, Range(1)] = 5  # odd kernel side of its convolutions
    canonicalizer_size: PositiveInt = 32  # it sees the input average-pooled to at most this side, pixels
    canonicalizer_beta: PositiveFloat = 1.0  # softmax sharpness of the straight-through pose gradient
    # Weight of the prior loss (cross-entropy of the pose logits toward the identity pose); 0: off. The
    # paper's classification runs use 100.
    canonicalizer_prior: NonNegativeFloat = 0.0

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

    crop_size: PositiveInt = 64  # output side of the global views, pixels (default: data.image_size)
    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of RandomResizedCrop
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    small_crop_size: PositiveInt = 32  # output side of the small crops (E-SSL), pixels (default: crop / 2)
    small_crop_scale: tuple[float, float] = (0.05, 0.4)
    hflip_prob: Probability = 0.5
    jitter_prob: Probability = 0.8
    brightness: NonNegativeFloat = 0.4
    contrast: NonNegativeFloat = 0.4
    saturation: NonNegativeFloat = 0.2
    hue: Annotated[float, Range(0, 0.5)] = 0.1
    grayscale_prob: Probability = 0.2
    blur_prob: Probability = 0.0
    blur_sigma: tuple[PositiveFloat, PositiveFloat] = (0.1, 2.0)
    # Solarisation (BYOL's; DINO, MoCo v3 and Barlow Twins use it too): with this probability a view's
    # values at or above the threshold (in [0, 1]) become 1 minus themselves; threshold 0 inverts the image.
    solarize_prob: Probability = 0.0
    solarize_threshold: Probability = 0.5
    # Per global view i, blur / solarisation probability view_*_prob[i] instead of blur_prob / solarize_prob
    # (BYOL's asymmetric pair: blur (1.0, 0.1), solarise (0.0, 0.2)); empty: the same for every view.
    view_blur_prob: tuple[Probability, ...] = ()
    view_solarize_prob: tuple[Probability, ...] = ()
    # Resample shrunk crops with an antialiasing (area-widened) bilinear filter, as PIL's resize in the
    # torchvision pipelines of the official codes; False: plain bilinear sampling (aliases when shrinking).
    antialias: bool = True
    # How views of source="object" are augmented: "none" keeps the rendered view (only resized and
    # normalised, as SIE does on 3DIEBench); "full" applies the same pipeline as image views.
    object_views: Literal["none", "full"] = "none"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam", "lars"] = "adamw"
    lr: PositiveFloat = 1e-3  # base learning rate, for reference_batch images per step
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # scale lr by global_batch / reference_batch
    reference_batch: PositiveInt = 256
    weight_decay: NonNegativeFloat = 1e-6
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    betas: tuple[
        Annotated[float, Range(0, 1, high_open=True)], Annotated[float, Range(0, 1, high_open=True)]
    ] = (
        0.9,
        0.999,
    )
    lars_eta: PositiveFloat = 0.02
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS adaptation) on biases and norms
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: Probability = 0.0  # cosine decays to lr * min_lr_ratio
    # Learning-rate multipliers by module of the objective, e.g. {predictor: 10} (a faster predictor, Tian,
    # Chen & Ganguli 2021); keys are dotted module paths (backbone.layer4), the longest match wins.
    lr_scales: dict[str, PositiveFloat] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    max_steps: PositiveInt = 1000
    max_minutes: NonNegativeFloat = (
        0.0  # >0: stop (and checkpoint) after this wall time; for equal-time comparisons
    )
    batch_size: PositiveInt = 128  # per process
    grad_accum_steps: PositiveInt = 1
    # fp64 is for numerical checks (e.g. 1 vs N processes agreeing to 1e-10), not for training speed.
    # fp16 autocasts with a dynamic loss scale whose state is checkpointed (launch/precision.py).
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = "fp32"
    channels_last: bool = False  # NHWC weights and images (faster convolutions on GPUs / oneDNN CPUs)
    compile: bool = False  # torch.compile of the objective's forward (first step compiles: tens of s)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    # inductor generates fused kernels (the fast one); aot_eager traces forward and backward but runs them
    # with eager kernels (seconds to compile: for checking that a model compiles, and for the tests)
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"
    clip_grad_norm: NonNegativeFloat = 0.0  # 0 disables clipping
    seed: NonNegativeInt = 0
    run_dir: str = "runs/{name}"  # {name}: the run's name, the one placeholder
    log_every: PositiveInt = 10
    # Where metrics go: metrics.jsonl, TensorBoard, Weights & Biases, MLflow (the last two through
    # accelerate's trackers; the track extra). See equissl/launch/logging.py.
    loggers: tuple[Literal["jsonl", "tensorboard", "wandb", "mlflow"], ...] = ("jsonl", "tensorboard")
    checkpoint_every: PositiveInt = 200
    keep_checkpoints: PositiveInt = 2
    online_probe: bool = True
    online_probe_lr: PositiveFloat = 1e-3
    progress: bool = True
    device: Literal["auto", "cpu"] = "auto"
    # BatchNorm statistics over the global batch when distributed (an all-gather BatchNorm that works on
    # every backend, gloo included: launch/sync_bn.py); off by default, as in most SSL recipes (per-GPU statistics).
    sync_batchnorm: bool = False
    # A non-finite loss or gradient norm stops the run (the batch is saved under nonfinite/); with
    # N > 0 up to N such optimizer steps are skipped (counted) before stopping.
    skip_nonfinite_steps: NonNegativeInt = 0
    # How long a rank waits for the others in a collective before the run stops naming the rank that did
    # not answer (torch's default is 30 minutes; a checkpoint save must fit in it).
    collective_timeout_s: PositiveFloat = 600.0
    # Online val kNN (launch/online_eval.py): every eval_every optimizer steps (0: off), the frozen
    # backbone's kNN top-1 on eval_samples fixed val images against eval_samples fixed train images.
    eval_every: NonNegativeInt = 0
    eval_samples: PositiveInt = 1000


@dataclass
class ProbeConfig:
    """Offline evaluation protocol (docs/evaluation.md, "Linear probe and kNN")."""

    epochs: PositiveInt = 100
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-2
    weight_decays: tuple[NonNegativeFloat, ...] = (0.0, 1e-5, 1e-4, 1e-3)
    holdout_fraction: Fraction = 0.1  # of train, to choose the weight decay
    knn_k: PositiveInt = 20
    knn_temperature: PositiveFloat = 0.07


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
    if origin is Annotated:
        value = _convert(value, args[0], path)
        for bound in (a for a in args[1:] if isinstance(a, Range)):
            if not bound.contains(value):
                raise ConfigError(f"{path}: expected a value {bound.describe()}, got {value!r}")
        return value
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
    if origin is dict:  # a free-form mapping (e.g. backbone.kwargs, passed on to a library)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping (key: value, ...), got {value!r}")
        key_type, item = args if args else (str, Any)
        return {
            _convert(k, key_type, f"{path}.<key>"): _convert(v, item, f"{path}.{k}") for k, v in value.items()
        }
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
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
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
        # an entry whose keys depend on another key of its section (E-SSL's ``base``) names its class
        select = getattr(cls, "config_for", None)
        if callable(select):
            cls = select(data, path)
    hints = typing.get_type_hints(cls, include_extras=True)
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
    """The tree of a recipe file, or of a packaged recipe given by name (:mod:`equissl.recipes`)."""
    from equissl.recipes import resolve_recipe

    path = resolve_recipe(path)
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
    _check_run_dir(config.trainer.run_dir)
    check_backbone_symmetry(config.backbone)
    for section in (config.data, config.backbone, config.objective):
        section.check(config)


def check_backbone_symmetry(backbone: BackboneConfig) -> None:
    """``backbone.frame`` / ``backbone.canonicalizer`` act on the pixel grid: image backbones only, one at a
    time, and an odd canonicalizer kernel (a filter centre)."""
    from equissl.registry import BACKBONES

    keys = [key for key in ("frame", "canonicalizer") if getattr(backbone, key) != "none"]
    if not keys:
        return
    if BACKBONES.get(backbone.name).meta.get("probe", "linear") != "linear":
        raise ConfigError(
            f"backbone.{keys[0]}={getattr(backbone, keys[0])!r}: backbone {backbone.name!r} does not take "
            "images; frame averaging and canonicalization act on image backbones"
        )
    if len(keys) == 2:
        raise ConfigError(
            f"backbone.frame={backbone.frame!r} and backbone.canonicalizer={backbone.canonicalizer!r}: "
            "choose one (either makes the backbone invariant); set the other to none"
        )
    if backbone.canonicalizer != "none" and backbone.canonicalizer_kernel % 2 == 0:
        raise ConfigError(
            f"backbone.canonicalizer_kernel: expected an odd size (a filter centre), got "
            f"{backbone.canonicalizer_kernel}"
        )


def _check_run_dir(run_dir: str) -> None:
    """``trainer.run_dir`` may use the placeholder ``{name}`` and no other."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(run_dir) if name is not None]
    except ValueError as error:
        raise ConfigError(
            f"trainer.run_dir {run_dir!r}: {error} (use {{{{ and }}}} for literal braces)"
        ) from None
    unknown = sorted(set(fields) - {"name"})
    if unknown:
        raise ConfigError(
            f"trainer.run_dir {run_dir!r}: unknown placeholder {{{unknown[0]}}}; the one known is {{name}}"
        )


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
