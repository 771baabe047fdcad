"""Fair budgets: turn a wall-time budget into ``trainer.max_steps`` by measuring the recipe's step time.

Why. ``trainer.max_minutes`` stops a run when its time is spent, but the learning-rate (and EMA-momentum)
schedules follow ``max_steps``, so a run stopped on time ends un-annealed, and a faster method is stopped
further from its schedule's end than a slower one. Calibrating instead measures the seconds per optimizer
step of *this* recipe on *this* machine (a short real run: the same data pipeline, model, precision and
online probe) and sets ``max_steps = floor(minutes * 60 / seconds per step)``: every method then gets its
whole schedule within (about) the same time, and the run is an ordinary fixed-step run, so resumes stay
exact.

The seconds per step are the recipe's whole cost of a step, periodic work included:

- the *step*: the median of the per-step times of the measured steps (``metrics.jsonl``'s ``images_per_s``
  at ``log_every=1``), after ``skip`` warm-up steps (first-call kernel selection, worker start). The median
  ignores the odd slow step of a shared machine;
- plus one *checkpoint write* per ``trainer.checkpoint_every`` steps: the calibration writes one after its
  measured steps and times it as the excess of the next step over the median step. On a GPU a step of
  ResNet-18 takes tens of milliseconds and a write about half a second, so leaving the writes out
  undercounted a CARE run by about 8% (docs/reports/2026-12-03-lighting-study.md);
- plus one *online kNN* (``val/knn_seconds``) per ``trainer.eval_every`` steps, when it is on.

On a machine whose load changes, equal minutes are still not equal compute: calibrate the recipes to
compare one after another in one session (``benchmarks/equal_time_table.py`` alternates them) and report
the steps each got.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from equissl.config import Config
from equissl.errors import ConfigError


@dataclass
class Calibration:
    """The result of :func:`calibrate`; ``max_steps`` is what to train for ``minutes``. Seconds per step =
    ``step_seconds + checkpoint_seconds / checkpoint_every + eval_seconds / eval_every``."""

    minutes: float
    seconds_per_step: float
    max_steps: int
    measured_steps: int
    images_per_step: int
    step_seconds: float  # the median optimizer step
    checkpoint_seconds: float  # one checkpoint write
    eval_seconds: float  # one online kNN (0 when trainer.eval_every is 0)

    @property
    def override(self) -> str:
        return f"trainer.max_steps={self.max_steps}"


def steps_for_budget(
    rates: list[float], images_per_step: int, minutes: float, periodic_seconds: float = 0.0
) -> tuple[float, int]:
    """(seconds per step, max_steps) from measured per-step image rates (images/s): the median rate gives
    the step time, ``periodic_seconds`` (checkpoints, online evaluation, amortised per step) is added, and
    ``max_steps = max(1, floor(minutes * 60 / seconds per step))``."""
    if not rates or any(rate <= 0 for rate in rates):
        raise ValueError(f"steps_for_budget needs positive measured rates, got {rates}")
    if minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    seconds_per_step = images_per_step / statistics.median(rates) + periodic_seconds
    return seconds_per_step, max(1, math.floor(minutes * 60 / seconds_per_step))


def periodic_costs(rows: list[dict], images_per_step: int, skip: int, measured: int) -> tuple[float, float]:
    """(one checkpoint write, one online kNN), seconds, from a calibration run's metrics rows: the write
    happened after step ``skip + measured`` and is the excess of the next step's time over the median of
    the measured steps' (never below 0); the kNN is that step's ``val/knn_seconds`` row (0 without one)."""
    end = skip + measured
    step_seconds = {
        row["step"]: images_per_step / row["images_per_s"] for row in rows if "images_per_s" in row
    }
    median = statistics.median(step_seconds[step] for step in range(skip + 1, end + 1))
    checkpoint = max(0.0, step_seconds[end + 1] - median) if end + 1 in step_seconds else 0.0
    knn = [row["val/knn_seconds"] for row in rows if "val/knn_seconds" in row]
    return checkpoint, (knn[0] if knn else 0.0)


def calibrate(config: Config, minutes: float, measure_steps: int = 20, skip: int = 3) -> Calibration:
    """Train ``skip + measure_steps + 1`` steps of ``config`` in a scratch run directory (deleted after) and
    return the :class:`Calibration` for a budget of ``minutes`` of training (single process; under a
    launcher every process measures its own rate, so calibrate with the same launch). The run writes a
    checkpoint (and runs the online kNN, when the recipe has it) after its measured steps; the last step
    times the write."""
    if measure_steps < 1 or skip < 0:
        raise ConfigError(f"calibration needs measure_steps >= 1 and skip >= 0, got {measure_steps}, {skip}")
    from equissl.launch.trainer import pretrain

    measured_end = skip + measure_steps
    recipe = config.trainer
    with tempfile.TemporaryDirectory(prefix="equissl-calibrate-") as scratch:
        trainer = dataclasses.replace(
            recipe,
            max_steps=measured_end + 1,
            max_minutes=0.0,
            checkpoint_every=measured_end,
            eval_every=measured_end if recipe.eval_every > 0 else 0,
            log_every=1,
            progress=False,
            loggers=("jsonl",),
            run_dir=str(Path(scratch) / "run"),
        )
        result = pretrain(dataclasses.replace(config, trainer=trainer))
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        launch = json.loads((result.run_dir / "launch.json").read_text())
    images_per_step = int(launch["global_batch"])
    rates = [
        row["images_per_s"] for row in rows if "images_per_s" in row and skip < row["step"] <= measured_end
    ]
    checkpoint, knn = periodic_costs(rows, images_per_step, skip, measure_steps)
    periodic = checkpoint / recipe.checkpoint_every + (knn / recipe.eval_every if recipe.eval_every else 0.0)
    seconds, max_steps = steps_for_budget(rates, images_per_step, minutes, periodic)
    step = images_per_step / statistics.median(rates)
    return Calibration(minutes, seconds, max_steps, len(rates), images_per_step, step, checkpoint, knn)
