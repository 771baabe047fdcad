"""Backbone exports that downstream code loads unchanged.

``safetensors``: the backbone's ``export_state_dict()`` (origin-library key names: a ResNet loads into
``torchvision.models.resnetXX()`` with ``strict=True`` once ``fc`` is excluded) plus a JSON sidecar and
the same metadata inside the safetensors header.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from safetensors.torch import save_file

from equissl.config import Config, to_dict
from equissl.eval.features import build_backbone, load_run

FORMATS = ("safetensors",)


def export_metadata(config: Config, checkpoint: Path) -> dict:
    resolved = to_dict(config)
    config_hash = hashlib.sha256(yaml.safe_dump(resolved, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "format": "equissl-backbone/1",
        "backbone": config.backbone.name,
        "backbone_config": resolved["backbone"],
        "objective": config.objective.name,
        "input_size": [3, config.augment.crop_size, config.augment.crop_size],
        "normalization": {"mean": list(config.augment.mean), "std": list(config.augment.std),
                          "input_range": "RGB in [0, 1] before normalisation"},
        "source_checkpoint": str(checkpoint.resolve()),
        "config_hash": config_hash,
        "config": resolved,
    }


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "safetensors", checkpoint: str | Path | None = None) -> Path:
    """Write the run's backbone to ``out`` in ``fmt``, with ``<out>.json`` metadata beside it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    config, path = load_run(run_dir, checkpoint)
    backbone = build_backbone(config, path)
    metadata = export_metadata(config, path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in backbone.export_state_dict().items()}
    save_file(state, str(out), metadata={"equissl": json.dumps(metadata)})
    Path(str(out) + ".json").write_text(json.dumps(metadata, indent=2))
    return out
