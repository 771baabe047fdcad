"""Export a pretrained PointPillars encoder for OpenPCDet.

``<out>.pth``: ``torch.save({"model_state": {...}, "version": ..., "equissl": <json>})`` -- the layout of
OpenPCDet's checkpoints, read by ``Detector3DTemplate.load_params_from_file`` (``--pretrained_model``):
it takes ``checkpoint["model_state"]`` and loads every key whose name and shape match its model, here
``vfe.pfn_layers.*`` and ``backbone_2d.blocks.*`` / ``backbone_2d.deblocks.*``; the detection head keeps
its initialisation. Only tensors and strings are stored, so ``torch.load(weights_only=True)`` reads it.
``<out>.safetensors``: the same state; ``<out>.json``: metadata, including the OpenPCDet config
fragment (POINT_CLOUD_RANGE, VOXEL_SIZE, VFE, MAP_TO_BEV, BACKBONE_2D) the weights fit.

    equissl export --run runs/essl3d_pointpillars_lidarsim --format openpcdet --out pretrained/pp_essl3d
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from equissl import __version__ as equissl_version
from equissl.backbones.lidar.pointpillars import openpcdet_model_config
from equissl.export.formats import check_export_target, check_format

OPENPCDET_PREFIXES = ("vfe.", "backbone_2d.")


def openpcdet_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The encoder's OpenPCDet-named tensors (``vfe.*``, ``backbone_2d.*``), contiguous, on the CPU."""
    check_format(backbone, "openpcdet")
    state = backbone.export_state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(OPENPCDET_PREFIXES)}


def write_openpcdet(backbone: nn.Module, out: str | Path, metadata: dict | None = None) -> dict[str, Path]:
    """Write ``<out>.pth``, ``<out>.safetensors`` and ``<out>.json`` (``out`` without suffix); returns the paths."""
    out = Path(out)
    if out.suffix in (".pth", ".safetensors", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = openpcdet_state_dict(backbone)
    metadata = dict(
        metadata or {},
        format="equissl-openpcdet/1",
        openpcdet_config=openpcdet_model_config(backbone.cfg),
        keys={k: list(v.shape) for k, v in state.items()},
    )
    text = json.dumps(metadata)
    paths = {
        "pth": out.with_suffix(".pth"),
        "safetensors": out.with_suffix(".safetensors"),
        "json": out.with_suffix(".json"),
    }
    torch.save({"model_state": state, "version": f"equissl+{equissl_version}", "equissl": text}, paths["pth"])
    save_file(state, str(paths["safetensors"]), metadata={"equissl": text})
    paths["json"].write_text(json.dumps(metadata, indent=2))
    return paths


def export_openpcdet_run(
    run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None
) -> dict[str, Path]:
    """A run's pretrained encoder (newest complete checkpoint unless given) -> OpenPCDet files."""
    from equissl.config import to_dict
    from equissl.runs import load_backbone, load_run

    check_export_target(run_dir, out)
    config, path = load_run(run_dir, checkpoint)
    backbone = load_backbone(config, path)
    metadata = {
        "backbone": config.backbone.name,
        "objective": config.objective.name,
        "source_checkpoint": str(path.resolve()),
        "config": to_dict(config),
    }
    return write_openpcdet(backbone, out, metadata)
