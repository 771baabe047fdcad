"""Fair budgets: a time budget turned into trainer.max_steps from the recipe's measured step time."""

from __future__ import annotations

import json
import time

import pytest

from equissl.cli import main
from equissl.config import build_config
from equissl.errors import ConfigError
from equissl.launch import checkpoint
from equissl.launch.budget import StepCosts, calibrate, step_costs, steps_for_budget


def test_steps_for_budget_amortises_the_periodic_work_and_pays_the_warm_up_once():
    # a 1 s step, a 0.5 s write every 100 steps, a 3 s kNN every 300: 1.015 s a step; 2.5 min -> 147 steps
    costs = StepCosts(step=1.0, warmup=0.0, checkpoint=0.5, eval=3.0)
    assert steps_for_budget(costs, 2.5, checkpoint_every=100, eval_every=300) == pytest.approx((1.015, 147))
    # without the kNN, and with 10.05 s of warm-up: (150 - 10.05) / 1.005 = 139.25 -> 139 steps
    warm = StepCosts(step=1.0, warmup=10.05, checkpoint=0.5, eval=3.0)
    assert steps_for_budget(warm, 2.5, checkpoint_every=100) == pytest.approx((1.005, 139))
    assert steps_for_budget(StepCosts(64.0, 0.0, 0.0, 0.0), 0.01, 100)[1] == 1  # never below one step
    with pytest.raises(ConfigError, match="minutes"):
        steps_for_budget(costs, 0.0, 100)


def test_step_costs_time_the_warm_up_the_write_after_the_measured_steps_and_read_the_knn_row():
    # 64 images a step; skip 1 (10 s), 4 measured steps (2..5) of 1, 2, 1, 1.5 s: median 1.25 s, warm-up
    # 10 - 1.25 = 8.75 s. The checkpoint written after step 5 makes step 6 take 3.75 s: the write took
    # 2.5 s. The kNN row says 4 s.
    seconds = {1: 10.0, 2: 1.0, 3: 2.0, 4: 1.0, 5: 1.5, 6: 3.75}
    rows = [{"step": step, "loss": 1.0, "images_per_s": 64 / s} for step, s in seconds.items()]
    rows.insert(5, {"step": 5, "val/knn_top1": 50.0, "val/knn_seconds": 4.0})
    assert step_costs(rows, 64, skip=1, measured=4) == pytest.approx(StepCosts(1.25, 8.75, 2.5, 4.0))
    # steps faster than the median cost nothing extra (never negative); no kNN row is 0 s
    fast = [dict(row, images_per_s=128.0) if row["step"] in (1, 6) else row for row in rows[:5] + rows[6:]]
    assert step_costs(fast, 64, skip=1, measured=4) == StepCosts(1.25, 0.0, 0.0, 0.0)


def test_calibrate_measures_the_recipe_in_a_scratch_run_and_prints_the_budget(
    tiny_overrides, tmp_path, capsys, monkeypatch
):
    # every checkpoint write takes 0.5 s longer, so the calibration must find a write of >= ~0.5 s
    write_shared = checkpoint.write_shared

    def slow_write(*args, **kwargs):
        time.sleep(0.5)
        return write_shared(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_shared", slow_write)
    args = ["calibrate", "--config", "simclr_resnet18_shapes3d", "--minutes", "0.05"]
    assert main([*args, "--measure-steps", "2", "--skip", "1", *tiny_overrides]) == 0
    printed, command = capsys.readouterr().out.strip().splitlines()[-2:]
    result = json.loads(printed)
    assert result["measured_steps"] == 2 and result["images_per_step"] == 8
    budget = 0.05 * 60 - result["warmup_seconds"]
    assert result["max_steps"] == max(1, int(budget / result["seconds_per_step"]))
    # the recipe's checkpoint_every (tiny_overrides: 2) amortises the measured write; the kNN is off
    assert result["checkpoint_seconds"] > 0.4 and result["eval_seconds"] == 0
    assert result["seconds_per_step"] == pytest.approx(
        result["step_seconds"] + result["checkpoint_seconds"] / 2
    )
    assert (
        command.endswith(f"trainer.max_steps={result['max_steps']}")
        and "--config simclr_resnet18_shapes3d" in command
    )
    assert not (tmp_path / "run").exists()  # the measuring run lived in a scratch directory
    with pytest.raises(ConfigError, match="measure_steps"):
        calibrate(build_config("simclr_resnet18_shapes3d", tiny_overrides), 1.0, measure_steps=0)
