"""Reading runs: a run directory's resolved config and checkpoints, and the backbone or objective they
hold. Used by the evaluations, the export, the command line and the Python API.

A run directory holds ``checkpoints/step-N/`` (:mod:`equissl.launch.checkpoint` writes them); the model
file of a checkpoint stores the whole pretraining model, whose keys start with ``objective.`` (the
objective and its heads) and ``objective.backbone.`` (the backbone), besides the online probe's
``probe.*``. Loading never executes code: weights through safetensors, the config through YAML.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from equissl.build import build_backbone, build_objective
from equissl.config import Config, from_dict
from equissl.errors import UserError
from equissl.launch import checkpoint as ckpt
from equissl.ssl.base import Objective

OBJECTIVE_PREFIX = "objective."
BACKBONE_PREFIX = "objective.backbone."


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Config, Path]:
    """The resolved config of a run and its newest usable checkpoint (or the one given).

    A damaged newest checkpoint (a file missing, truncated or altered since it was written, see
    :func:`equissl.launch.checkpoint.verify`) is named in a warning and the previous complete one used; a
    damaged ``checkpoint`` given explicitly is a :class:`UserError` naming the file.
    """
    run_dir = Path(run_dir)
    if checkpoint:
        path = Path(checkpoint)
        if not (path / ckpt.COMPLETE_MARKER).is_file():
            raise UserError(f"{path} is not a complete checkpoint (no {ckpt.COMPLETE_MARKER} marker)")
        try:
            ckpt.verify(path)
        except ckpt.CheckpointError as error:
            raise UserError(f"damaged checkpoint: {error}") from None
    else:
        path = next(ckpt.usable_checkpoints(run_dir), None)
        if path is None:
            what = "no usable" if ckpt.complete_checkpoints(run_dir) else "no complete"
            raise UserError(f"{what} checkpoint in {run_dir / 'checkpoints'}: run `equissl pretrain` first")
    try:
        config = from_dict(Config, yaml.safe_load((path / "config.yaml").read_text()))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"{path / 'config.yaml'}: unreadable ({error})") from None
    return config, path


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a complete checkpoint was written at (its ``COMPLETE`` marker)."""
    return int((Path(checkpoint) / ckpt.COMPLETE_MARKER).read_text())


def _with_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def objective_state(checkpoint: str | Path) -> dict[str, Tensor]:
    """The objective's weights (backbone, heads, targets) of a checkpoint, without the prefix."""
    return _with_prefix(ckpt.load_model_state(Path(checkpoint)), OBJECTIVE_PREFIX)


def backbone_state(checkpoint: str | Path) -> dict[str, Tensor]:
    """The backbone's weights of a checkpoint, without the prefix."""
    return _with_prefix(ckpt.load_model_state(Path(checkpoint)), BACKBONE_PREFIX)


def load_backbone(config: Config, checkpoint: str | Path | None, seed: int = 0) -> nn.Module:
    """The run's backbone in eval mode with the checkpoint's weights, or randomly initialised (seeded by
    ``seed``) when ``checkpoint`` is None."""
    torch.manual_seed(seed)
    backbone = build_backbone(config, pretrained=False)  # weights: the checkpoint, or a random init
    if checkpoint is not None:
        backbone.load_state_dict(backbone_state(checkpoint), strict=True)
    return backbone.eval()


def load_objective(config: Config, checkpoint: str | Path, device: str | torch.device = "cpu") -> Objective:
    """The run's objective (backbone, heads, predictor) with the checkpoint's weights, in eval mode."""
    objective = build_objective(config, pretrained=False)
    objective.load_state_dict(objective_state(checkpoint), strict=True)
    return objective.to(device).eval()
