"""Fair budgets: a time budget turned into trainer.max_steps from the recipe's measured step time."""

from __future__ import annotations

import json

import pytest

from equissl.cli import main
from equissl.config import build_config
from equissl.errors import ConfigError
from equissl.launch.budget import calibrate, steps_for_budget


def test_steps_for_budget_uses_the_median_rate():
    # 64 images a step; rates 32, 64 (median), 640 images/s -> 1 s a step; 2.5 minutes -> 150 steps
    assert steps_for_budget([32.0, 640.0, 64.0], 64, 2.5) == (1.0, 150)
    assert steps_for_budget([1.0], 64, 0.01) == (64.0, 1)  # never below one step
    with pytest.raises(ValueError):
        steps_for_budget([], 64, 1.0)
    with pytest.raises(ConfigError, match="minutes"):
        steps_for_budget([10.0], 64, 0.0)


def test_calibrate_measures_the_recipe_in_a_scratch_run_and_prints_the_budget(
    tiny_overrides, tmp_path, capsys
):
    args = ["calibrate", "--config", "simclr_resnet18_shapes3d", "--minutes", "0.05"]
    assert main([*args, "--measure-steps", "2", "--skip", "1", *tiny_overrides]) == 0
    printed, command = capsys.readouterr().out.strip().splitlines()[-2:]
    result = json.loads(printed)
    assert result["measured_steps"] == 2 and result["images_per_step"] == 8
    assert result["max_steps"] == max(1, int(0.05 * 60 / result["seconds_per_step"]))
    assert (
        command.endswith(f"trainer.max_steps={result['max_steps']}")
        and "--config simclr_resnet18_shapes3d" in command
    )
    assert not (tmp_path / "run").exists()  # the measuring run lived in a scratch directory
    with pytest.raises(ConfigError, match="measure_steps"):
        calibrate(build_config("simclr_resnet18_shapes3d", tiny_overrides), 1.0, measure_steps=0)
