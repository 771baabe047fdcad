"""Fair budgets: turn a wall-time budget into ``trainer.max_steps`` by measuring the recipe's step time.

Why. ``trainer.max_minutes`` stops a run when its time is spent, but the learning-rate (and EMA-momentum)
schedules follow ``max_steps``, so a run stopped on time ends un-annealed, and a faster method is stopped
further from its schedule's end than a slower one. Calibrating instead measures the seconds per optimizer
step of *this* recipe on *this* machine (a short real run: the same data pipeline, model, precision and
online probe) and sets ``max_steps = floor(minutes * 60 / seconds per step)``: every method then gets its
whole schedule within (about) the same time, and the run is an ordinary fixed-step run, so resumes stay
exact.

The step time is the median of the per-step rates of the measured steps (``metrics.jsonl``'s
``images_per_s`` at ``log_every=1``), after ``skip`` warm-up steps (first-call kernel selection, worker
start): the median ignores the odd slow step of a shared machine. On a machine whose load changes, equal
minutes are still not equal compute: calibrate the recipes to compare one after another in one session
(``benchmarks/equal_time_table.py`` alternates them) and report the steps each got.
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
    """The result of :func:`calibrate`; ``max_steps`` is what to train for ``minutes``."""

    minutes: float
    seconds_per_step: float
    max_steps: int
    measured_steps: int
    images_per_step: int

    @property
    def override(self) -> str:
        return f"trainer.max_steps={self.max_steps}"


def steps_for_budget(rates: list[float], images_per_step: int, minutes: float) -> tuple[float, int]:
    """(seconds per step, max_steps) from measured per-step image rates (images/s): the median rate gives
    the step time; ``max_steps = max(1, floor(minutes * 60 / seconds per step))``."""
    if not rates or any(rate <= 0 for rate in rates):
        raise ValueError(f"steps_for_budget needs positive measured rates, got {rates}")
    if minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    seconds_per_step = images_per_step / statistics.median(rates)
    return seconds_per_step, max(1, math.floor(minutes * 60 / seconds_per_step))


def calibrate(config: Config, minutes: float, measure_steps: int = 20, skip: int = 3) -> Calibration:
    """Train ``skip + measure_steps`` steps of ``config`` in a scratch run directory (deleted after) and
    return the :class:`Calibration` for a budget of ``minutes`` of training (single process; under a
    launcher every process measures its own rate, so calibrate with the same launch)."""
    if measure_steps < 1 or skip < 0:
        raise ConfigError(f"calibration needs measure_steps >= 1 and skip >= 0, got {measure_steps}, {skip}")
    from equissl.launch.trainer import pretrain

    steps = skip + measure_steps
    with tempfile.TemporaryDirectory(prefix="equissl-calibrate-") as scratch:
        trainer = dataclasses.replace(
            config.trainer,
            max_steps=steps,
            max_minutes=0.0,
            checkpoint_every=steps,
            log_every=1,
            progress=False,
            loggers=("jsonl",),
            run_dir=str(Path(scratch) / "run"),
        )
        result = pretrain(dataclasses.replace(config, trainer=trainer))
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        launch = json.loads((result.run_dir / "launch.json").read_text())
    rates = [row["images_per_s"] for row in rows if row["step"] > skip]
    images_per_step = int(launch["global_batch"])
    seconds, max_steps = steps_for_budget(rates, images_per_step, minutes)
    return Calibration(minutes, seconds, max_steps, len(rates), images_per_step)
