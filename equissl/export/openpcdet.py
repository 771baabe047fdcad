"""Export a pretrained PointPillars encoder for OpenPCDet.

``<out>.pth``: ``torch.save({"model_state": {...}, "version": ..., "equissl": <json>})`` -- the layout of
OpenPCDet's checkpoints, read by ``Detector3DTemplate.load_params_from_file`` (``--pretrained_model``):
it takes ``checkpoint["model_state"]`` and loads every key whose name and shape match its model, here
``vfe.pfn_layers.*`` and ``backbone_2d.blocks.*`` / ``backbone_2d.deblocks.*``; the detection head keeps
its initialisation. Only tensors and strings are stored, so ``torch.load(weights_only=True)`` reads it.
``<out>.safetensors``: the same state; ``<out>.json``: metadata, including the OpenPCDet config
fragment (POINT_CLOUD_RANGE, VOXEL_SIZE, VFE, MAP_TO_BEV, BACKBONE_2D) the weights fit.

    python -m equissl.export.openpcdet --run runs/essl3d_pointpillars_lidarsim --out pretrained/pp_essl3d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import equissl.backbones.lidar
import equissl.datasets.lidar_sim
import equissl.ssl.scene_flow  # noqa: F401  (registers essl3d: runs' configs name it)
from equissl import __version__ as equissl_version
from equissl.backbones.lidar.pointpillars import PointPillars, openpcdet_model_config

OPENPCDET_PREFIXES = ("vfe.", "backbone_2d.")


def openpcdet_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The encoder's OpenPCDet-named tensors (``vfe.*``, ``backbone_2d.*``), contiguous, on the CPU."""
    if not isinstance(backbone, PointPillars):
        raise ValueError(f"OpenPCDet export needs a pointpillars backbone, got {type(backbone).__name__}")  # noqa: TRY004
    state = backbone.export_state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(OPENPCDET_PREFIXES)}


def write_openpcdet(backbone: nn.Module, out: str | Path, metadata: dict | None = None) -> dict[str, Path]:
    """Write ``<out>.pth``, ``<out>.safetensors`` and ``<out>.json`` (``out`` without suffix); returns the paths."""
    out = Path(out)
    if out.suffix in (".pth", ".safetensors", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = openpcdet_state_dict(backbone)
    metadata = dict(metadata or {}, format="equissl-openpcdet/1",
                    openpcdet_config=openpcdet_model_config(backbone.cfg),
                    keys={k: list(v.shape) for k, v in state.items()})
    text = json.dumps(metadata)
    paths = {"pth": out.with_suffix(".pth"), "safetensors": out.with_suffix(".safetensors"),
             "json": out.with_suffix(".json")}
    torch.save({"model_state": state, "version": f"equissl+{equissl_version}", "equissl": text}, paths["pth"])
    save_file(state, str(paths["safetensors"]), metadata={"equissl": text})
    paths["json"].write_text(json.dumps(metadata, indent=2))
    return paths


def export_openpcdet_run(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> dict[str, Path]:
    """A run's pretrained encoder (newest complete checkpoint unless given) -> OpenPCDet files."""
    from equissl.config import to_dict
    from equissl.eval.features import build_backbone, load_run

    config, path = load_run(run_dir, checkpoint)
    backbone = build_backbone(config, path)
    metadata = {"backbone": config.backbone.name, "objective": config.objective.name,
                "source_checkpoint": str(path.resolve()), "config": to_dict(config)}
    return write_openpcdet(backbone, out, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m equissl.export.openpcdet", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--out", required=True, help="output path without suffix")
    args = parser.parse_args(argv)
    try:
        paths = export_openpcdet_run(args.run, args.out, args.checkpoint)
    except ValueError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
