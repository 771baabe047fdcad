"""Atomic checkpoints: ``checkpoints/step-N/`` written under a temporary name, marked, then renamed.

A directory counts as a checkpoint only when it holds the ``COMPLETE`` marker, written after every
other file (by every rank) is on disk, and has its final name. ``manifest.json``, written just before the
marker, records every file's size and SHA-256, so that a truncated, missing or altered file is found
before anything is loaded (:func:`verify`); readers then fall back to the previous complete checkpoint
(:func:`usable_checkpoints`). Loading never executes code: weights through safetensors, everything else
through ``torch.load(weights_only=True)`` or JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

COMPLETE_MARKER = "COMPLETE"
MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "config.yaml")
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(Exception):
    """A complete checkpoint whose files cannot be used; the message names the checkpoint and the file."""


@dataclass
class TrainerState:
    """Where the loop stands: optimizer steps done, the epoch and the batches consumed within it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_seconds: float = 0.0  # training wall time over all sessions of the run
    finished: bool = False
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss / gradient norm
    bad_reads: int = 0  # unreadable files skipped, summed over workers and ranks
    items_read: int = 0  # items delivered plus bad_reads, summed over workers and ranks
    overflow_steps: int = 0  # fp16 steps not taken because the scaled gradients overflowed


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) and named generator states, ``weights_only``-loadable."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])


def temp_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step-{step:08d}.tmp"


def write_shared(
    tmp: Path,
    model_state: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    scaler,
    trainer_state: TrainerState,
    config_yaml: str,
) -> None:
    """The rank-0 part of a checkpoint: weights, optimizer, scheduler, scaler, loop state, config."""
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / "model.safetensors")
    )
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state.__dict__))
    (tmp / "config.yaml").write_text(config_yaml)


def write_rank_rng(tmp: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(generators), tmp / f"rng-rank{rank}.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the size and SHA-256 of every file of the checkpoint written so far."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps(files, indent=1))


def finalize(run_dir: Path, step: int, keep: int) -> Path:
    """Mark the temporary directory complete, give it its final name, prune to the newest ``keep``."""
    tmp = temp_dir(run_dir, step)
    write_manifest(tmp)
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    (tmp / COMPLETE_MARKER).write_text(str(step))
    _fsync_dir(tmp)
    final = checkpoint_root(run_dir) / f"step-{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; torn ones (no marker) are skipped with a warning."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if not match or not path.is_dir():
            continue
        if not (path / COMPLETE_MARKER).is_file():
            warnings.warn(f"skipping torn checkpoint {path} (no {COMPLETE_MARKER} marker)", stacklevel=2)
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def verify(checkpoint: Path) -> None:
    """Raise :class:`CheckpointError` naming the file unless every file of ``checkpoint`` is present and
    (for checkpoints with a manifest) of the recorded size and SHA-256, and its loop state parses."""
    checkpoint = Path(checkpoint)
    manifest_path = checkpoint / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{manifest_path}: unreadable ({error})") from None
    else:  # written before manifests existed: check that the files are there
        manifest = {name: None for name in REQUIRED_FILES}
    for name, expected in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if expected is not None and path.stat().st_size != expected["bytes"]:
            raise CheckpointError(f"{path} has {path.stat().st_size} bytes, {expected['bytes']} were written")
        if expected is not None and _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path} differs from what was written (SHA-256 mismatch)")
    try:
        load_trainer_state(checkpoint)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{checkpoint / 'trainer_state.json'}: not a loop state ({error})") from None


def usable_checkpoints(run_dir: Path) -> Iterator[Path]:
    """Complete checkpoints that pass :func:`verify`, newest first (verified as they are reached); each
    damaged one is named in a warning, and readers then take the previous one."""
    for path in reversed(complete_checkpoints(run_dir)):
        try:
            verify(path)
        except CheckpointError as error:
            warnings.warn(f"damaged checkpoint, skipped: {error}", stacklevel=2)
            continue
        yield path


def load_model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(checkpoint) / "model.safetensors"))


def load_trainer_state(checkpoint: Path) -> TrainerState:
    """The loop state; fields added since the checkpoint was written get their defaults."""
    values = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    if not isinstance(values, dict):
        raise TypeError(f"expected a JSON object, got {type(values).__name__}")
    return TrainerState(**values)


def load_torch(checkpoint: Path, name: str) -> Any:
    return torch.load(Path(checkpoint) / name, map_location="cpu", weights_only=True)


def load_torch_if_present(checkpoint: Path, name: str) -> Any | None:
    """``load_torch`` of an optional part (the fp16 scaler, a rank's RNG), or None when it is absent."""
    return load_torch(checkpoint, name) if (Path(checkpoint) / name).is_file() else None


def load_rank_rng(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    return load_torch_if_present(checkpoint, f"rng-rank{rank}.pt")
