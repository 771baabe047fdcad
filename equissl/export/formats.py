"""Backbone exports that downstream code loads unchanged.

Every export writes ``<out>`` and ``<out>.json`` (the metadata: input size, mean/std, objective, source
checkpoint, config hash, resolved config, and how the consumer loads the file); the metadata is also
embedded wherever the format has room for it.

- ``safetensors``: the backbone's ``export_state_dict()`` (origin-library key names), metadata in the
  safetensors header. Any backbone.
- ``torchvision`` (ResNets with the ``imagenet`` stem, ``torchvision`` backbones by name): a plain
  ``torch.save`` state dict (or safetensors if ``out`` ends in ``.safetensors``) of torchvision keys
  without the classifier; it loads with ``strict=True`` into ``torchvision.models.<builder>(**kwargs)``
  with ``<classifier> = nn.Identity()`` (ResNets: ``fc``; also ``backbone.body`` of torchvision's Faster
  R-CNN FPN models, ``fasterrcnn_resnet50_fpn``, ``resnet_fpn_backbone``).
- ``timm``: safetensors for ``timm.create_model(name, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file=out, num_classes=0), **timm_kwargs)``; ResNets as timm's
  ``resnetXX``, the polyphase ViT as our registered ``equissl_poly_vit_<size>``
  (:mod:`equissl.export.timm_models`), ``timm`` backbones as their own ``model_name``.
- ``detectron2``: the pickle detectron2's ``tools/convert-torchvision-to-d2.py`` writes: ``{"model":
  {name: numpy array}, "__author__", "matching_heuristics": True}`` with ``stem.conv1.*``,
  ``res2..res5``, ``convK.norm.*``, ``shortcut(.norm)``; pixel mean/std in 0-255 RGB stated in the
  metadata (``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD``, ``INPUT.FORMAT``), also stored under "equissl".
- ``mmdet``: ``torch.save({"state_dict": {"backbone." + key: ...}, "meta": metadata})``, torchvision keys
  (= mmdet's ``ResNet`` keys) for ``init_cfg=dict(type="Pretrained", checkpoint=out, prefix="backbone.")``.
- ``onnx``: the feature extractor ``(B, 3, H, W) normalised -> (B, num_features)`` with a dynamic batch
  axis, metadata in the model's ``metadata_props``.

A symmetrized backbone (``backbone.frame`` / ``backbone.canonicalizer``) writes its inner backbone in the
weight formats, with ``symmetry`` in the metadata (and a canonicalizer's weights in
``<out>.canonicalizer.safetensors``); its ONNX graph is the whole symmetrized model.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from equissl.backbones.base import IMAGE_FORMATS
from equissl.config import Config, to_dict
from equissl.errors import ConfigError, UserError, import_extra
from equissl.launch import checkpoint as ckpt
from equissl.runs import load_backbone, load_run

FORMATS = IMAGE_FORMATS
ONNX_OPSET = 17


def export_metadata(config: Config, checkpoint: Path) -> dict:
    resolved = to_dict(config)
    config_hash = hashlib.sha256(yaml.safe_dump(resolved, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "format": "equissl-backbone/1",
        "backbone": config.backbone.name,
        "backbone_config": resolved["backbone"],
        "objective": config.objective.name,
        "input_size": [3, config.augment.crop_size, config.augment.crop_size],
        "normalization": {
            "mean": list(config.augment.mean),
            "std": list(config.augment.std),
            "input_range": "RGB in [0, 1] before normalisation",
        },
        "source_checkpoint": str(checkpoint.resolve()),
        "config_hash": config_hash,
        "config": resolved,
    }


# ----------------------------------------------------------------------------------------------------
# Key conversions (pure functions of a torchvision-keyed ResNet state dict, ``torchvision_state_dict()``).


def detectron2_key(name: str) -> str:
    """torchvision ResNet key -> detectron2 key, as detectron2's torchvision converter renames them."""
    if "layer" not in name:
        name = "stem." + name
    for stage in (1, 2, 3, 4):
        name = name.replace(f"layer{stage}", f"res{stage + 1}")
    for index in (1, 2, 3):
        name = name.replace(f"bn{index}", f"conv{index}.norm")
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def to_detectron2(state: dict[str, Tensor]) -> dict[str, object]:
    """The converter's pickle payload; ``num_batches_tracked`` dropped (detectron2's BN has none)."""
    model = {
        detectron2_key(k): v.detach().cpu().numpy()
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    return {"model": model, "__author__": "equissl", "matching_heuristics": True}


def to_mmdet(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmdet's ``ResNet`` uses torchvision's names (``bn1``, ``downsample.0/1``); only the prefix is added."""
    return OrderedDict(("backbone." + k, v) for k, v in state.items())


def _pixel_stats_255(metadata: dict) -> tuple[list[float], list[float]]:
    norm = metadata["normalization"]
    return [round(255 * m, 3) for m in norm["mean"]], [round(255 * s, 3) for s in norm["std"]]


# ----------------------------------------------------------------------------------------------------
# Writers: (backbone, metadata, out) -> extra metadata describing how to load the file.


def _write_safetensors(backbone: nn.Module, metadata: dict, out: Path) -> dict:
    state = {k: v.contiguous() for k, v in backbone.export_state_dict().items()}
    save_file(state, str(out), metadata={"equissl": json.dumps(metadata)})
    return {}


def _write_torchvision(backbone: nn.Module, metadata: dict, out: Path) -> dict:
    state = backbone.torchvision_state_dict()
    if out.suffix == ".safetensors":
        save_file(dict(state), str(out), metadata={"equissl": json.dumps(metadata)})
        load = "safetensors.torch.load_file(path)"
    else:
        torch.save(state, out)
        load = "torch.load(path, weights_only=True)"
    arch, classifier = backbone.torchvision_builder(), backbone.torchvision_classifier()
    kwargs = backbone.torchvision_kwargs()
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    detector = ", or the .backbone.body of a Faster R-CNN FPN model" if classifier == "fc" else ""
    return {
        "torchvision_model": arch,
        "torchvision_kwargs": kwargs,
        "torchvision_classifier": classifier,
        "consumer": {
            "library": "torchvision",
            "load": f"torchvision.models.{arch}({args}) with {classifier} = nn.Identity(){detector}: "
            f".load_state_dict({load}, strict=True)",
        },
    }


def _write_timm(backbone: nn.Module, metadata: dict, out: Path) -> dict:
    name, kwargs = backbone.timm_model()
    extra = {
        "timm_model": name,
        "timm_kwargs": kwargs,
        "consumer": {
            "library": "timm",
            "load": f"timm.create_model({name!r}, pretrained=True, num_classes=0, "
            f"pretrained_cfg_overlay=dict(file=path, num_classes=0), **timm_kwargs)  # strict"
            + (
                "  # after `import equissl.export` (registers the name)" if name.startswith("equissl") else ""
            ),
        },
    }
    state = {k: v.contiguous() for k, v in backbone.export_state_dict().items()}
    save_file(state, str(out), metadata={"equissl": json.dumps({**metadata, **extra})})
    return extra


def _write_detectron2(backbone: nn.Module, metadata: dict, out: Path) -> dict:
    mean, std = _pixel_stats_255(metadata)
    extra = {
        "detectron2_config": {
            "MODEL.WEIGHTS": str(out.resolve()),
            "MODEL.PIXEL_MEAN": mean,
            "MODEL.PIXEL_STD": std,
            "INPUT.FORMAT": "RGB",
            "MODEL.RESNETS.DEPTH": backbone.depth,
            "MODEL.RESNETS.STRIDE_IN_1X1": False,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if backbone.depth < 50 else 256,
        },
        "consumer": {
            "library": "detectron2",
            "load": "DetectionCheckpointer(model).load(path) with the "
            "detectron2_config keys set (pixels in 0-255, RGB)",
        },
    }
    payload = to_detectron2(backbone.torchvision_state_dict())
    payload["equissl"] = {**metadata, **extra}
    with open(out, "wb") as handle:
        pickle.dump(payload, handle)
    return extra


def _write_mmdet(backbone: nn.Module, metadata: dict, out: Path) -> dict:
    mean, std = _pixel_stats_255(metadata)
    extra = {
        "mmdet_config": {
            "model.backbone": {
                "type": "ResNet",
                "depth": backbone.depth,
                "style": "pytorch",
                "init_cfg": {"type": "Pretrained", "checkpoint": str(out.resolve()), "prefix": "backbone."},
            },
            "model.data_preprocessor": {"mean": mean, "std": std, "bgr_to_rgb": True},
        },
        "consumer": {
            "library": "mmdet",
            "load": "init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.') on mmdet's ResNet",
        },
    }
    torch.save(
        {
            "state_dict": to_mmdet(backbone.torchvision_state_dict()),
            "meta": json.loads(json.dumps({**metadata, **extra})),
        },
        out,
    )
    return extra


def _write_onnx(backbone: nn.Module, metadata: dict, out: Path) -> dict:
    onnx = import_extra("onnx", "the ONNX export", "export")

    size = metadata["input_size"]
    example = torch.randn(2, *size)
    # opset 17 unless the model needs a newer operator (a C8 canonicalizer's affine_grid: opset 20)
    opset = getattr(backbone, "onnx_opset", ONNX_OPSET)
    torch.onnx.export(
        backbone.eval(),
        (example,),
        str(out),
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    model = onnx.load(str(out))
    entry = model.metadata_props.add()
    entry.key, entry.value = "equissl", json.dumps(metadata)
    onnx.save(model, str(out))
    return {
        "onnx_opset": opset,
        "consumer": {
            "library": "onnxruntime",
            "load": "onnxruntime.InferenceSession(path).run(None, "
            "{'image': x})  # x (B, 3, H, W) float32, normalised with mean/std",
        },
    }


WRITERS: dict[str, Callable[[nn.Module, dict, Path], dict]] = {
    "safetensors": _write_safetensors,
    "torchvision": _write_torchvision,
    "timm": _write_timm,
    "detectron2": _write_detectron2,
    "mmdet": _write_mmdet,
    "onnx": _write_onnx,
}


def _write_symmetry(info: dict, weights: dict[str, Tensor], fmt: str, out: Path) -> dict:
    """Metadata naming the symmetrization of a wrapped backbone. Weight formats hold the inner backbone
    (loadable by its consumer) and the canonicalizer's weights go beside them in
    ``<out>.canonicalizer.safetensors``; the ONNX graph is the whole symmetrized model."""
    info = dict(info)
    if fmt == "onnx":
        info["exported"] = "the whole symmetrized model"
        return info
    info["exported"] = "the inner backbone's weights; apply the symmetrization as 'apply' says"
    if weights:
        path = out.with_name(out.name + ".canonicalizer.safetensors")
        save_file(weights, str(path), metadata={"equissl": json.dumps(info)})
        info["canonicalizer_weights"] = path.name
    return info


def check_format(backbone: nn.Module, fmt: str, name: str = "") -> None:
    """Refuse ``fmt`` unless the backbone declares it (``export_formats``), saying which it supports and why
    (``export_note``)."""
    if fmt in backbone.export_formats:
        return
    note = f"; {backbone.export_note}" if backbone.export_note else ""
    raise ConfigError(
        f"backbone {name or type(backbone).__name__} cannot export as {fmt!r} "
        f"(it exports as: {', '.join(backbone.export_formats)}){note}"
    )


def export_backbone(backbone: nn.Module, metadata: dict, out: str | Path, fmt: str = "safetensors") -> Path:
    """Write ``backbone`` to ``out`` in ``fmt`` and ``<out>.json`` with ``metadata`` (plus loading hints)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    check_format(backbone, fmt, metadata.get("backbone", ""))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**metadata, "export_format": fmt}
    symmetry = getattr(backbone, "export_symmetry", None)  # a frame-averaged / canonicalized backbone
    if symmetry is not None:
        metadata["symmetry"] = _write_symmetry(*symmetry(), fmt, out)
    extra = WRITERS[fmt](backbone.eval(), metadata, out)
    Path(str(out) + ".json").write_text(json.dumps({**metadata, **extra}, indent=2))
    return out


def check_export_target(run_dir: str | Path, out: str | Path) -> Path:
    """``out`` as a file path the export may write: refuse a directory and any path inside the run's
    ``checkpoints/`` (an export must never overwrite a checkpoint's own files)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(
            f"export --out {out} is a directory: give a file path, e.g. {out / 'backbone.safetensors'}"
        )
    checkpoints = ckpt.checkpoint_root(Path(run_dir)).resolve()
    if out.resolve().is_relative_to(checkpoints):
        raise UserError(
            f"export --out {out} is inside {checkpoints}: an export must not overwrite checkpoint files"
        )
    return out


def export_run(
    run_dir: str | Path, out: str | Path, fmt: str = "safetensors", checkpoint: str | Path | None = None
) -> Path:
    """Write the run's backbone to ``out`` in ``fmt``, with ``<out>.json`` metadata beside it."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    out = check_export_target(run_dir, out)
    config, path = load_run(run_dir, checkpoint)
    return export_backbone(load_backbone(config, path), export_metadata(config, path), out, fmt)
