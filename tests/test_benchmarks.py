"""The benchmark scripts still run against the current trainer (their figures are never asserted)."""

import importlib.util
from pathlib import Path

import pytest

from equissl.config import build_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_measures_full_step_forward_backward_and_augmentation(tiny_overrides):
    config = build_config("simclr_resnet18_shapes3d", tiny_overrides)
    figures = _load("throughput").measure(config, steps=1, warmup=0, rounds=2)
    for name in ("full_step", "forward_backward", "data_and_augmentation"):
        assert figures[f"{name}_images_per_s"] > 0 and figures[f"{name}_ms_per_step"] > 0
        # images/s is batch / median seconds per step
        assert figures[f"{name}_images_per_s"] == pytest.approx(
            8000 / figures[f"{name}_ms_per_step"], rel=0.01
        )
    assert figures["augmentation_overhead_fraction"] < 1


def test_backbones_rounds_take_the_median_of_per_round_ratios():
    combine = _load("backbones").combine_rounds
    pairs = [("steer", ""), ("steer_exported", "steer")]
    rounds = [
        {"steer": {"images_per_s": 10.0}, "steer_exported": {"images_per_s": 20.0}},  # ratio 0.5
        {"steer": {"images_per_s": 30.0}, "steer_exported": {"images_per_s": 40.0}},  # ratio 0.75
        {"steer": {"images_per_s": 9.0}, "steer_exported": {"images_per_s": 10.0}},  # ratio 0.9
    ]
    results = combine(rounds, pairs)
    assert results["steer"]["images_per_s"] == 10.0 and results["steer_exported"]["images_per_s"] == 20.0
    assert results["steer"]["relative_speed"] == {"steer_exported": 0.75}  # not 10 / 20 of the medians
    assert results["steer"]["relative_speed_per_round"] == {"steer_exported": [0.5, 0.75, 0.9]}
    assert results["steer_exported"]["counterpart_of"] == "steer"


def test_lighting_study_commands_are_valid_recipes_with_fixed_or_varied_lighting(tmp_path):
    """Every training of the study parses as a config (keys and values checked), on the render it names,
    with the 2x budget; the tiny variant keeps the lighting and shrinks the budget."""
    study = _load("lighting_study")
    for method, (recipe, _, steps, _) in study.METHODS.items():
        for lighting in study.LIGHTINGS:
            arguments = study.pretrain_arguments(method, lighting, tmp_path / f"{method}_{lighting}")
            assert arguments[:3] == ["pretrain", "--config", recipe]
            config = build_config(recipe, arguments[3:])
            assert config.data.lighting == lighting and config.trainer.max_steps == steps
            assert (config.data.rotations, config.data.objects_per_class) == ("3diebench", 100)
            assert config.trainer.precision == "bf16"
            assert f"data.lighting={lighting}" in study.render_arguments(lighting)
            tiny = build_config(
                recipe, study.pretrain_arguments(method, lighting, tmp_path / "t", tiny=True)[3:]
            )
            assert tiny.trainer.max_steps == 2 and tiny.data.lighting == lighting
    recipe, overrides, _, part = study.METHODS["simclr_obj"]
    assert build_config(recipe, overrides).objective.views == "object" and part == "full"
    extra = ["trainer.precision=fp32"]  # the command line's overrides win over the study's bf16
    arguments = study.pretrain_arguments("seqjepa", "fixed", tmp_path / "s", extra=extra)
    assert arguments[-1] == extra[0] and build_config(arguments[2], arguments[3:]).trainer.precision == "fp32"


def test_care_study_reads_calibrate_s_json_after_the_run_s_log_lines():
    """The CARE runs' step count comes from ``equissl calibrate``'s JSON, the last JSON line of its stdout
    (the calibration run's own log lines come first); the steps it needs are its warm-up + timed ones."""
    import argparse
    import sys

    study = _load("lighting_study")
    printer = (
        "print('1 process(es) x 1 accumulation'); print('{\"max_steps\": 417}'); print('equissl pretrain')"
    )
    seconds, parsed = study.run_json([sys.executable, "-c", printer], {}, dry_run=False)
    assert parsed == {"max_steps": 417} and seconds >= 0
    args = argparse.Namespace(runs_dir="r", tiny=False, dry_run=True, overrides=["trainer.precision=fp32"])
    calibration = study.care_study(args, {})["calibration"]["command"].split()
    assert calibration[1:4] == ["calibrate", "--config", "care_resnet18_shapes3d"]
    assert calibration[calibration.index("--skip") + 1] == "3" and calibration[-1] == "trainer.precision=fp32"


def test_symmetrized_benchmark_times_every_variant_against_the_bare_model():
    import argparse

    args = argparse.Namespace(batch_size=2, image_size=32, warmup=0, repeats=1, backbones=["convnext_atto"])
    figures = _load("symmetrized").throughput(args)["timm convnext_atto"]
    assert set(figures["images_per_s"]) == {
        "bare",
        "frame c4",
        "frame d4",
        "canonicalizer c4",
        "canonicalizer c8",
    }
    assert figures["relative_to_bare"]["bare"] == 1.0 and all(v > 0 for v in figures["images_per_s"].values())
    params = figures["params"]
    assert (
        params["frame c4"] == params["bare"] < params["canonicalizer c4"]
    )  # frame averaging adds no weights


def test_equal_time_table_alternates_bases_and_their_essl_and_writes_markdown():
    """The order and the table; calibrate, pretrain and evaluate_run, which it chains, are tested elsewhere
    (a real run of the chain takes about a minute on 2 cores)."""
    table = _load("equal_time_table")
    order = table.runs(
        ["byol", "dino"], essl=True, overrides=["data.image_size=32", "dino:objective.local_crop_size=16"]
    )
    assert [label for label, _, _ in order] == ["byol", "essl/byol", "dino", "essl/dino"]
    assert order[1][1] == "byol_resnet18_shapes3d" and "objective.base=byol" in order[1][2]
    assert order[0][2] == ["data.image_size=32"]  # a BASE: override reaches that base's runs only
    assert order[2][2] == order[3][2][:2] == ["data.image_size=32", "objective.local_crop_size=16"]
    for _, name, overrides in order:
        build_config(name, overrides)  # every run's config is valid
    row = {
        "run": "essl/byol",
        "steps": 3,
        "train_seconds": 9.6,
        "linear": 50.0,
        "knn": 40.25,
        "rotation_acc": 90.0,
    }
    text = table.markdown([row], {"linear": 30.0, "knn": 20.0})
    assert (
        "| random init | 0 | 0 | 30.0 | 20.0 | |" in text
        and "| essl/byol | 3 | 10 | 50.0 | 40.2 | 90.0 |" in text
    )


def test_equal_time_table_steps_mode_trains_the_given_steps_without_calibrating(monkeypatch, tmp_path):
    """``--steps N`` (screening) sets trainer.max_steps to N and never calls the calibration; without it
    the calibrated override is what reaches the trainer."""
    import types

    from equissl.eval import report
    from equissl.launch import budget, trainer

    table = _load("equal_time_table")
    seen = []

    def fake_pretrain(config):
        seen.append(config.trainer.max_steps)
        return types.SimpleNamespace(step=config.trainer.max_steps)

    def fake_report(run_dir, methods, compare_random=False):
        return {"results": {"pretrained": {"linear": 50.0, "knn": 40.0}}}

    def fake_calibrate(config, minutes, measure):
        return types.SimpleNamespace(override="trainer.max_steps=7", seconds_per_step=0.5)

    monkeypatch.setattr(trainer, "pretrain", fake_pretrain)
    monkeypatch.setattr(report, "evaluate_run", fake_report)
    monkeypatch.setattr(budget, "calibrate", lambda *a: pytest.fail("--steps must not calibrate"))
    row = table.train_and_probe("byol", "byol_resnet18_shapes3d", [], 1.0, 5, tmp_path, False, steps=11)
    assert seen == [11] and row["steps"] == 11 and row["calibrated_seconds_per_step"] is None
    monkeypatch.setattr(budget, "calibrate", fake_calibrate)
    row = table.train_and_probe("byol", "byol_resnet18_shapes3d", [], 1.0, 5, tmp_path, False)
    assert seen == [11, 7] and row["calibrated_seconds_per_step"] == 0.5


def test_peers_dry_run_times_equissl_and_lightly_when_installed(tiny_shapes3d_root):
    """``peers.py --dry`` in a subprocess, as a user runs it: the equissl side always runs; the lightly side
    runs when lightly (the bench extra) is installed, and the JSON says "not installed" otherwise."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import TINY_DATA

    overrides = [f"data.root={tiny_shapes3d_root}", *TINY_DATA]
    command = [sys.executable, str(BENCHMARKS / "peers.py"), "--dry", "--workers", "1", "--threads", "1"]
    command += ["--precision", "fp32", "--device", "cpu", *overrides]
    # this checkout's equissl first, whichever one the environment has installed
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(BENCHMARKS.parent), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    settings = out["settings"]
    chosen = ("batch_size", "image_size", "workers", "threads", "rounds", "steps_per_round", "precision")
    assert [settings[key] for key in chosen] == [4, 32, 1, 1, 1, 1, "fp32"]
    assert settings["overrides"] == overrides and settings["torch"] and settings["device"] == "cpu"
    assert out["equissl"]["images_per_s"] > 0 and len(out["equissl"]["images_per_s_per_round"]) == 1
    if importlib.util.find_spec("lightly") is None:
        assert out["lightly"] == "not installed" and out["ratio_equissl_over_lightly"] is None
        assert settings["lightly"] == "not installed"
    else:
        lightly = out["lightly"]
        assert lightly["images_per_s"] > 0 and len(lightly["images_per_s_per_round"]) == 1
        assert lightly["transform"]["input_size"] == 32 and lightly["transform"]["min_scale"] == 0.2
        assert lightly["forward"] == "separate" and settings["lightly"] == lightly["version"]
        # one round: the ratio of the medians is that round's ratio
        assert out["ratio_equissl_over_lightly"] == out["ratio_per_round"][0] > 0


def test_decode_benchmark_times_workers_and_device_decoding_in_a_dry_run(tmp_path):
    decode = _load("decode")
    args = decode.parse_args(["--dry", "--folder", str(tmp_path / "images")])
    figures = decode.run(args)
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 8
    assert set(figures["images_per_s"]) == {"workers", "device"}
    assert all(value > 0 for value in figures["images_per_s"].values()) and figures["device_over_workers"] > 0
    assert figures["device"] == "cpu" and figures["settings"]["backbone"] == "resnet18"
    assert len(figures["per_round"]) == 1


def test_gpu_check_runs_every_part_in_its_dry_mode(tiny_shapes3d_root):
    """``benchmarks/gpu_check.sh --dry``: the script a GPU machine runs, tiny and on the CPU; every part
    must produce its JSON (no part may come back as an error record)."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import TINY_DATA

    overrides = [f"data.root={tiny_shapes3d_root}", *TINY_DATA]
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join([str(BENCHMARKS.parent), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry", *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["dry"] is True and report["device"] == "cpu"
    parts = {"throughput_fp16_nhwc-false", "throughput_fp16_nhwc-true_compiled", "decode", "peers"}
    assert parts <= report.keys()
    errors = {name: report[name]["stderr_tail"] for name in parts if "error" in report[name]}
    assert not errors, errors
    for name in ("throughput_fp16_nhwc-false", "throughput_fp16_nhwc-true_compiled"):
        assert (
            report[name]["full_step_images_per_s"] > 0
            and "trainer.precision=fp16" in report[name]["overrides"]
        )
    assert report["decode"]["images_per_s"]["device"] > 0 and report["peers"]["equissl"]["images_per_s"] > 0


def test_feature_pcs_r2_against_hand_computed_cases():
    import numpy as np

    pcs = _load("feature_pcs")
    x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])  # a constant and t = 0..3
    y = np.stack([2.0 * x[:, 1] + 1.0, np.array([1.0, -1.0, -1.0, 1.0])], axis=1)
    # column 0 is linear in t (R^2 = 1); column 1 is orthogonal to both design columns (R^2 = 0)
    np.testing.assert_allclose(pcs.r2(y, x), [1.0, 0.0], atol=1e-12)
    # groups {0, 1} and {2, 3}: column 1's group means are 0 and 0, so R^2 = 0; column 0's are 2 and 6,
    # leaving residuals +-1 (sum 4) against a total sum of squares of 20, so R^2 = 1 - 4 / 20 = 0.8
    np.testing.assert_allclose(pcs.r2_by_group(y, np.array([0, 0, 1, 1])), [0.8, 0.0], atol=1e-12)
    # norms 0, 1, ..., 100: the 99th percentile is 99, the median 50
    assert pcs.norm_spread(np.arange(101.0)) == 99 / 50
