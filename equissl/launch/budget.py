"""Fair budgets: turn a wall-time budget into ``trainer.max_steps`` by measuring the recipe's step time.

Why. ``trainer.max_minutes`` stops a run when its time is spent, but the learning-rate (and EMA-momentum)
schedules follow ``max_steps``, so a run stopped on time ends un-annealed, and a faster method is stopped
further from its schedule's end than a slower one. Calibrating instead measures the seconds per optimizer
step of *this* recipe on *this* machine (a short real run: the same data pipeline, model, precision and
online probe) and sets ``max_steps = floor((minutes * 60 - warm-up) / seconds per step)``: every method
gets its whole schedule within (about) the same time, and the run is an ordinary fixed-step run, so
resumes stay exact.

The seconds per step are the recipe's whole cost of a step, periodic work included:

- the *step*: the median of the per-step times of the measured steps (``metrics.jsonl``'s ``images_per_s``
  at ``log_every=1``), after ``skip`` warm-up steps (first-call kernel selection, worker start). The median
  ignores the odd slow step of a shared machine;
- plus one *checkpoint write* per ``trainer.checkpoint_every`` steps: the calibration writes one after its
  measured steps and times it as the excess of the next step over the median step;
- plus one *online kNN* (``val/knn_seconds``) per ``trainer.eval_every`` steps, when it is on;

and the run's *warm-up* (what the ``skip`` first steps took beyond as many median steps: worker start,
first-call kernel selection, a GPU's allocator) is paid once, so it comes off the budget before it is
divided. A run's clock (``trainer.max_minutes``, the checkpoint's ``elapsed_seconds``) counts all of them.
On a GPU, where a ResNet-18 step takes tens of milliseconds, the median step alone left the lighting
study's CARE run (docs/reports/2026-12-03-lighting-study.md) about 19% slower a step than calibrated.

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
    """The result of :func:`calibrate`; ``max_steps`` is what to train for ``minutes``: ``(minutes * 60 -
    warmup_seconds) / seconds_per_step``, with ``seconds_per_step = step_seconds + checkpoint_seconds /
    checkpoint_every + eval_seconds / eval_every``."""

    minutes: float
    seconds_per_step: float
    max_steps: int
    measured_steps: int
    images_per_step: int
    step_seconds: float  # the median optimizer step
    warmup_seconds: float  # what the first steps cost beyond as many median steps, once per run
    checkpoint_seconds: float  # one checkpoint write
    eval_seconds: float  # one online kNN (0 when trainer.eval_every is 0)

    @property
    def override(self) -> str:
        return f"trainer.max_steps={self.max_steps}"


@dataclass
class StepCosts:
    """What a calibration run's metrics rows say a run costs, seconds."""

    step: float  # the median of the measured steps
    warmup: float  # the warm-up steps' excess over as many median steps (never below 0)
    checkpoint: float  # one write: the excess of the step after it over the median (never below 0)
    eval: float  # one online kNN (its ``val/knn_seconds`` row; 0 without one)


def step_costs(rows: list[dict], images_per_step: int, skip: int, measured: int) -> StepCosts:
    """The :class:`StepCosts` of a calibration run that trained ``skip`` warm-up steps, ``measured``
    steps, wrote a checkpoint (and ran the online kNN, if on) after step ``skip + measured``, and trained
    one more step; ``rows`` are its metrics.jsonl rows at ``log_every=1``."""
    end = skip + measured
    seconds = {row["step"]: images_per_step / row["images_per_s"] for row in rows if "images_per_s" in row}
    median = statistics.median(seconds[step] for step in range(skip + 1, end + 1))
    warmup = max(0.0, sum(seconds[step] for step in range(1, skip + 1)) - skip * median)
    checkpoint = max(0.0, seconds[end + 1] - median) if end + 1 in seconds else 0.0
    knn = [row["val/knn_seconds"] for row in rows if "val/knn_seconds" in row]
    return StepCosts(median, warmup, checkpoint, knn[0] if knn else 0.0)


def steps_for_budget(
    costs: StepCosts, minutes: float, checkpoint_every: int, eval_every: int = 0
) -> tuple[float, int]:
    """(seconds per step, max_steps) for ``minutes`` of training: a step costs ``costs.step`` plus one
    checkpoint write per ``checkpoint_every`` steps plus one online kNN per ``eval_every`` (0: off), and
    ``max_steps = max(1, floor((minutes * 60 - costs.warmup) / seconds per step))``."""
    if minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    if costs.step <= 0:
        raise ValueError(f"steps_for_budget needs a positive measured step time, got {costs.step}")
    seconds_per_step = costs.step + costs.checkpoint / checkpoint_every
    seconds_per_step += costs.eval / eval_every if eval_every else 0.0
    return seconds_per_step, max(1, math.floor((minutes * 60 - costs.warmup) / seconds_per_step))


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
    costs = step_costs(rows, images_per_step, skip, measure_steps)
    seconds, max_steps = steps_for_budget(costs, minutes, recipe.checkpoint_every, recipe.eval_every)
    return Calibration(
        minutes,
        seconds,
        max_steps,
        measure_steps,
        images_per_step,
        costs.step,
        costs.warmup,
        costs.checkpoint,
        costs.eval,
    )
