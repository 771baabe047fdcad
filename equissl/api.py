"""The Python API: what ``import equissl`` offers (docs/python.md).

    import equissl

    run = equissl.pretrain("simclr_resnet18_shapes3d", data="~/photos", out="runs/photos",
                           trainer={"max_steps": 2000})
    backbone = equissl.load_backbone(run)              # eval mode; backbone.transform: size, mean, std
    features = backbone(backbone.transform(images))   # images: uint8 / float tensors or PIL images
    report = equissl.probe(run, data="~/labelled")     # a labelled folder, train/<class>/...
    equissl.export(run, format="onnx", out="backbone.onnx")

    run = equissl.pretrain("simclr_resnet18_shapes3d", data="~/photos", backbone=my_module)

Settings are given the way a recipe holds them: a section as a dict (``trainer={"max_steps": 100}``),
merged into the recipe's section (a ``data`` / ``backbone`` / ``objective`` dict naming another entry
replaces the section), one key as ``section__key=value`` (``optim__lr=1e-3``), or ``overrides=[
"optim.lr=1e-3"]`` as on the command line. Shortcuts: ``data="folder"`` reads an image folder
(``data.name=imagefolder``), ``out="dir"`` sets ``trainer.run_dir``, ``backbone=nn.Module`` trains your
own module (:mod:`equissl.backbones.custom`). Every setting is checked as strictly as a recipe.

A face: it composes the trainer, the runs, the evaluations and the export.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from equissl.backbones.custom import attached, class_path, feature_width
from equissl.config import Config, ProbeConfig, apply_overrides, derive_sizes, from_dict, to_dict, validate
from equissl.errors import UserError

POLYMORPHIC = ("data", "backbone", "objective")
DEFAULT_RECIPE = "simclr_resnet18_shapes3d"


# ----------------------------------------------------------------------------------------------------
# Listings.


def _descriptions(registry) -> dict[str, str]:
    return {entry.name: entry.meta["description"] for entry in registry.entries()}


def list_recipes() -> dict[str, str]:
    """Packaged recipe name -> one-line description (``equissl list recipes``)."""
    from equissl.recipes import list_recipes as packaged

    return packaged()


def list_backbones() -> dict[str, str]:
    """Registered backbone name -> description."""
    from equissl.registry import BACKBONES

    return _descriptions(BACKBONES)


def list_objectives() -> dict[str, str]:
    """Registered objective name -> description."""
    from equissl.registry import OBJECTIVES

    return _descriptions(OBJECTIVES)


def list_datasets() -> dict[str, str]:
    """Registered dataset name -> description."""
    from equissl.registry import DATASETS

    return _descriptions(DATASETS)


# ----------------------------------------------------------------------------------------------------
# Configs from Python values.


def _tree(recipe_or_config: str | Path | Config | dict | None) -> dict[str, Any]:
    from equissl.config import load_recipe

    if isinstance(recipe_or_config, Config):
        return to_dict(recipe_or_config)
    if isinstance(recipe_or_config, dict):
        return copy.deepcopy(recipe_or_config)
    if recipe_or_config is None:
        return {}
    return load_recipe(recipe_or_config)


def _merge(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set section or key ``key`` of ``tree``: dicts merge into a section of the same entry, replace one
    of another entry (a different ``name``)."""
    current = tree.get(key)
    if isinstance(value, dict) and isinstance(current, dict):
        renamed = key in POLYMORPHIC and "name" in value and value["name"] != current.get("name")
        tree[key] = copy.deepcopy(value) if renamed else {**current, **copy.deepcopy(value)}
    else:
        tree[key] = copy.deepcopy(value)


def make_config(
    recipe_or_config: str | Path | Config | dict | None = None,
    overrides: Iterable[str] = (),
    **settings: Any,
) -> Config:
    """A validated :class:`Config` from a recipe (name or file), a Config or a dict, plus settings given
    as in :func:`pretrain` (except ``backbone=nn.Module``)."""
    tree = _tree(recipe_or_config)
    data = settings.pop("data", None)
    if isinstance(data, (str, Path)):
        data = {"name": "imagefolder", "root": str(Path(data).expanduser())}
    if data is not None:
        _merge(tree, "data", data)
    out = settings.pop("out", None)
    if out is not None:
        tree.setdefault("trainer", {})["run_dir"] = str(out)
    for key, value in settings.items():
        if "__" in key:
            node = tree
            *sections, last = key.split("__")
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = copy.deepcopy(value)
        else:
            _merge(tree, key, value)
    apply_overrides(tree, list(overrides))
    config = from_dict(Config, tree)
    derive_sizes(config, tree)
    validate(config)
    return config


# ----------------------------------------------------------------------------------------------------
# Runs.


@dataclass
class InputTransform:
    """What a backbone expects: images resized (shorter side, antialiased) and centre-cropped to ``size``,
    scaled to [0, 1], normalised with ``mean`` / ``std`` (per RGB channel). ``transform(images)`` takes a
    uint8 tensor (3, H, W) / (B, 3, H, W), a float tensor in [0, 1], a PIL image or a list of them, and
    returns float32 (B, 3, size, size)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _one(self, image: Any) -> Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        if isinstance(image, Image.Image):
            from equissl.datasets.folders import _rgb_array

            image = torch.from_numpy(_rgb_array(image).copy()).permute(2, 0, 1)
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"expected an RGB image (3, H, W) or a PIL image, got {type(image).__name__}")
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        x = TF.resize(x, [self.size], antialias=True)
        return TF.center_crop(x, [self.size, self.size])

    def __call__(self, images: Any) -> Tensor:
        if isinstance(images, Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        x = torch.stack([self._one(image) for image in images])
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass
class Run:
    """A pretraining run: its folder, resolved config and how it ended. ``module``: your own backbone
    module when the run trained one (kept so that the methods below can rebuild it)."""

    dir: Path
    config: Config
    step: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    module: nn.Module | None = field(default=None, repr=False)

    def load_backbone(self, checkpoint: str | Path | None = None) -> nn.Module:
        return load_backbone(self, checkpoint=checkpoint)

    def probe(self, **kwargs: Any) -> dict:
        return probe(self, **kwargs)

    def export(self, format: str = "safetensors", out: str | Path | None = None, **kwargs: Any) -> Path:
        return export(self, format=format, out=out, **kwargs)


def _custom(config: Config, module: nn.Module) -> Config:
    """``config`` with its backbone section set to the ``custom`` entry describing ``module``."""
    from equissl.backbones.custom import CustomBackboneConfig

    width = feature_width(module, config.augment.crop_size)
    backbone = CustomBackboneConfig(name="custom", module=class_path(module), num_features=width)
    return dataclasses.replace(config, backbone=backbone)


def pretrain(
    recipe_or_config: str | Path | Config | dict | None = DEFAULT_RECIPE,
    *,
    backbone: nn.Module | dict | None = None,
    overrides: Iterable[str] = (),
    **settings: Any,
) -> Run:
    """Pretrain (or resume, or find finished) the run of a recipe with settings (module docstring).

    ``backbone``: a section dict, or any ``nn.Module`` mapping images (B, 3, H, W) to features (B, D);
    its width is found by a dummy forward and a copy of it is trained. Returns the :class:`Run`.
    """
    from equissl.launch.trainer import pretrain as train

    module = backbone if isinstance(backbone, nn.Module) else None
    if backbone is not None and module is None:
        settings["backbone"] = backbone
    config = make_config(recipe_or_config, overrides, **settings)
    if module is None:
        result = train(config)
        return Run(result.run_dir, config, result.step, result.status, result.last_metrics)
    config = _custom(config, module)
    with attached(module):
        result = train(config)
    return Run(result.run_dir, config, result.step, result.status, result.last_metrics, module)


def _run_parts(run: Run | str | Path, checkpoint: str | Path | None) -> tuple[Config, Path, Path]:
    """(config, checkpoint, run folder) of a Run or a run folder."""
    from equissl.runs import load_run

    folder = run.dir if isinstance(run, Run) else Path(run).expanduser()
    config, path = load_run(folder, checkpoint)
    return config, path, folder


def _module(run: Run | str | Path, backbone: nn.Module | None) -> nn.Module | None:
    return backbone if backbone is not None else run.module if isinstance(run, Run) else None


def _attached_if(module: nn.Module | None):
    import contextlib

    return attached(module) if module is not None else contextlib.nullcontext()


def load_backbone(
    source: Run | str | Path, *, backbone: nn.Module | None = None, checkpoint: str | Path | None = None
) -> nn.Module:
    """The backbone of a run (its newest complete checkpoint, or ``checkpoint``) or of an exported file
    (``equissl export``: safetensors, torchvision or timm; read with its ``.json`` metadata), in eval mode
    with ``.transform``, its :class:`InputTransform`. ``backbone``: your own module, for runs and exports
    of the ``custom`` backbone (its weights are loaded into a copy)."""
    path = source.dir if isinstance(source, Run) else Path(source).expanduser()
    if path.is_file():
        return _load_export(path, backbone)
    from equissl.runs import load_backbone as run_backbone

    config, checkpoint_path, _ = _run_parts(source, checkpoint)
    with _attached_if(_module(source, backbone)):
        model = run_backbone(config, checkpoint_path)
    model.transform = InputTransform(config.augment.crop_size, config.augment.mean, config.augment.std)
    return model.eval()


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_export(path: Path, module: nn.Module | None) -> nn.Module:
    metadata_file = Path(str(path) + ".json")
    if not metadata_file.is_file():
        raise UserError(f"{metadata_file} is missing: load_backbone reads files written by equissl export")
    metadata = json.loads(metadata_file.read_text())
    fmt = metadata.get("export_format", "safetensors")
    if fmt not in ("safetensors", "torchvision", "timm"):
        raise UserError(
            f"{path} is a {fmt} export: load_backbone reads safetensors, torchvision and timm exports "
            f"(and run folders); a {fmt} file loads in its own library"
        )
    from equissl.registry import BACKBONES

    entry = BACKBONES.get(metadata["backbone"])
    cfg = from_dict(entry.config_cls, metadata["backbone_config"], "backbone")
    with _attached_if(module):
        model = BACKBONES.build(cfg.name, cfg)
    state = _read_weights(path)
    target = model.module if hasattr(model, "module") and cfg.name == "custom" else model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError:
        plain = getattr(model, "export", None)  # steerable nets export their equivalent plain network
        if plain is None:
            raise
        model = plain()
        model.load_state_dict(state, strict=True)
    size = metadata["input_size"][-1]
    norm = metadata["normalization"]
    model.transform = InputTransform(size, tuple(norm["mean"]), tuple(norm["std"]))
    return model.eval()


def probe(
    run: Run | str | Path,
    *,
    data: str | Path | None = None,
    methods: tuple[str, ...] = ("linear", "knn"),
    compare_random: bool = False,
    checkpoint: str | Path | None = None,
    backbone: nn.Module | None = None,
    **probe_settings: Any,
) -> dict:
    """Linear probe and kNN of a run's frozen backbone (``equissl probe``): on its own data, or on the
    labelled image folder ``data`` (``train/<class>/`` and ``val/<class>/``, or ``<class>/`` with a held-out
    part). ``probe_settings``: ``probe.*`` keys (``epochs=20``). Returns the report (``report["results"]``:
    model -> method -> top-1 %), also written to ``RUN/eval/``."""
    from equissl.eval.report import evaluate_run

    config, _, folder = _run_parts(run, checkpoint)
    probe_cfg = from_dict(ProbeConfig, {**to_dict(config.probe), **probe_settings}, "probe")
    with _attached_if(_module(run, backbone)):
        return evaluate_run(folder, tuple(methods), compare_random, checkpoint, probe_cfg, data=data)


def export(
    run: Run | str | Path,
    *,
    format: str = "safetensors",
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    backbone: nn.Module | None = None,
) -> Path:
    """Write the run's backbone in ``format`` (``equissl export``) to ``out`` (default:
    ``RUN/export/backbone.<format>``), with ``<out>.json`` metadata; returns ``out``."""
    from equissl.export.formats import export_run

    _, _, folder = _run_parts(run, checkpoint)
    suffix = {"onnx": ".onnx", "detectron2": ".pkl", "torchvision": ".pth", "mmdet": ".pth"}.get(
        format, ".safetensors"
    )
    target = Path(out) if out is not None else folder / "export" / f"backbone{suffix}"
    with _attached_if(_module(run, backbone)):
        return export_run(folder, target, format, checkpoint)


__all__ = [
    "InputTransform",
    "Run",
    "export",
    "list_backbones",
    "list_datasets",
    "list_objectives",
    "list_recipes",
    "load_backbone",
    "make_config",
    "pretrain",
    "probe",
]
