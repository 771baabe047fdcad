"""Resuming never lies: the config a run resumes with is compared with its checkpoint's, key by key.

- Settings that only steer how the run proceeds (:data:`FREE`: the step and time budget, logging,
  checkpoint cadence, the online val kNN, data workers, fault tolerances, the offline probe) may change on resume and take
  effect; the run prints each change.
- Optimiser values (``optim.*``) may change only when asked for explicitly (``--override-optim``); they
  then replace the checkpoint's in the optimizer and the learning-rate schedule. Without it, or for a
  change the optimizer state cannot follow (``optim.name``, ``optim.exclude_bias_and_norm``), the resume
  is refused.
- Everything else defines the run (objective, backbone, data, augmentation, seed, batch, precision):
  a change is refused in one line with the diff and how to start a new run instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from equissl.config import Config, to_dict
from equissl.errors import ConfigError

FREE = (
    "trainer.max_steps",
    "trainer.max_minutes",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.progress",
    "trainer.loggers",
    "trainer.skip_nonfinite_steps",
    "trainer.collective_timeout_s",
    "trainer.eval_every",  # the online val kNN changes no weight, statistic or RNG state
    "trainer.eval_samples",
    "trainer.device",
    "data.num_workers",
    "data.prefetch_factor",
    "data.decode",  # where JPEGs are decoded: the same crops, up to the decoders' rounding
    "data.max_bad_fraction",
    "data.min_items_before_abort",
    "probe.",
)
OPTIM = "optim."
OPTIM_FIXED = ("optim.name", "optim.exclude_bias_and_norm")  # the optimizer state cannot follow these


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_settings(previous: Config, current: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (checkpoint's value, current value) for every setting that differs."""
    old, new = flatten(to_dict(previous)), flatten(to_dict(current))
    keys = sorted(old.keys() | new.keys())
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _describe(changes: dict[str, tuple[Any, Any]], limit: int = 3) -> str:
    shown = [f"{key} {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:limit]]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(shown) + more


def check_resume(
    previous: Config, current: Config, checkpoint: Path, override_optim: bool
) -> dict[str, tuple[Any, Any]]:
    """The changes a resume from ``checkpoint`` may apply (free ones, and optim ones when overridden);
    raise :class:`ConfigError` in one line for any other change."""
    changes = {
        k: v for k, v in changed_settings(previous, current).items() if k not in ("name", "trainer.run_dir")
    }
    defining = {k: v for k, v in changes.items() if not _matches(k, FREE) and not k.startswith(OPTIM)}
    optim = {k: v for k, v in changes.items() if k.startswith(OPTIM)}
    fixed = {k: v for k, v in optim.items() if k in OPTIM_FIXED}
    new_run = "start a new run with name=NEW_NAME (or trainer.run_dir=...), or restore the setting"
    if defining or fixed:
        raise ConfigError(
            f"resume from {checkpoint} refused: {_describe({**defining, **fixed})} changed since that "
            f"checkpoint, and it defines the run; {new_run}"
        )
    if optim and not override_optim:
        raise ConfigError(
            f"resume from {checkpoint} refused: {_describe(optim)} changed since that checkpoint; pass "
            f"--override-optim to resume with the new optimiser settings, or {new_run}"
        )
    return changes


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the lines of ``metrics.jsonl`` logged after ``last_step`` (a run killed after its checkpoint
    logs those steps again on resume); returns how many were dropped. Rewritten atomically."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) <= last_step]
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", -1))
    except (ValueError, AttributeError):
        return float("inf")  # a torn last line (killed mid-write) goes too
