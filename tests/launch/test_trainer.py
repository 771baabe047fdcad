"""End-to-end behaviour of the pretraining loop on a tiny shapes3d render."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from equissl.config import build_config
from equissl.errors import NonFiniteLossError
from equissl.launch import checkpoint as ckpt
from equissl.launch.trainer import Trainer, pretrain

RECIPE = "simclr_resnet18_shapes3d"


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "equissl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ckpt.latest_checkpoint(run_dir)
        if found is not None:
            return found
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_run_writes_config_metrics_and_keeps_the_last_checkpoints(tiny_overrides, tmp_path):
    config = build_config(RECIPE, tiny_overrides)
    result = pretrain(config)
    run = tmp_path / "run"
    assert result.status == "finished" and result.step == 6
    assert (run / "config.yaml").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "probe/acc", "images_per_s"} <= r.keys() for r in rows)
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step-00000004", "step-00000006"]
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(run)).finished
    assert pretrain(config).status == "already finished"


# (recipe, objective overrides, other overrides, max_steps): DINO carries the most state besides the weights of the
# momentum methods (EMA teacher, momentum, centre, step count; BYOL's and MoCo v3's target and momentum are
# held the same way, as parameters and buffers), which must come back from the checkpoint exactly. fp16
# carries its loss scale: its first steps overflow and halve it, so a resume that restarted from the
# initial scale would skip other batches and end with other weights (timm's tiny test_resnet: float16
# convolutions are emulated, and slow, on CPUs without native float16).
KILL_CASES = {
    "simclr": (RECIPE, None, [], 10),
    "simclr_fp16": (
        RECIPE,
        None,
        ["trainer.precision=fp16", "backbone={name: timm, model_name: test_resnet}"],
        10,
    ),
    "dino": (
        "dino_resnet18_shapes3d",
        [
            "objective.out_dim=64",
            "objective.hidden_dim=32",
            "objective.local_crops=2",
            "objective.local_crop_size=16",
            "objective.warmup_teacher_temperature_epochs=2",
            "trainer.batch_size=16",  # 5 steps an epoch: the resumed part crosses into epoch 1, where the
            # last layer unfreezes and the teacher temperature steps, both read from the restored step count
        ],
        [],
        7,
    ),
}


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_sigkill_then_same_command_resumes_and_matches_uninterrupted(tiny_overrides, tmp_path, case):
    recipe, objective, extra, max_steps = KILL_CASES[case]
    if objective is not None:  # the tiny overrides' projector keys are SimCLR's
        tiny_overrides = [o for o in tiny_overrides if not o.startswith("objective.")] + objective
    common = [
        "pretrain",
        "--config",
        recipe,
        *tiny_overrides,
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every=3",
        *extra,
    ]
    reference_dir = tmp_path / "reference"
    assert (
        subprocess.run(
            [sys.executable, "-m", "equissl.cli", *common, f"trainer.run_dir={reference_dir}"],
            capture_output=True,
            timeout=300,
            check=False,
        ).returncode
        == 0
    )
    killed = _cli(common)
    first = _wait_for_checkpoint(tmp_path / "run", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step_at_kill = ckpt.load_trainer_state(first).step
    assert 3 <= step_at_kill < max_steps
    resumed = subprocess.run(
        [sys.executable, "-m", "equissl.cli", *common],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    final = ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "run"))
    expected = ckpt.load_model_state(ckpt.latest_checkpoint(reference_dir))
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "run")).step == max_steps
    for key, value in expected.items():  # same data order, same augmentations, same weights
        assert torch.equal(final[key], value), key
    if case == "simclr_fp16":
        scale = ckpt.load_torch(ckpt.latest_checkpoint(tmp_path / "run"), "scaler.pt")["scale"]
        assert scale == ckpt.load_torch(ckpt.latest_checkpoint(reference_dir), "scaler.pt")["scale"]
        assert scale < 2.0**16  # the run did overflow and back off: the test exercises the scale


def test_sigterm_writes_a_complete_checkpoint_and_exits_zero(tiny_overrides, tmp_path):
    process = _cli(
        [
            "pretrain",
            "--config",
            RECIPE,
            *tiny_overrides,
            "trainer.max_steps=400",
            "trainer.checkpoint_every=1000",
        ]
    )
    run = tmp_path / "run"
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and (latest / ckpt.COMPLETE_MARKER).is_file()
    state = ckpt.load_trainer_state(latest)
    assert 1 <= state.step < 400 and not state.finished


def test_non_finite_loss_stops_with_the_step(tiny_overrides, monkeypatch):
    trainer = Trainer(build_config(RECIPE, tiny_overrides))
    objective = trainer.accelerator.unwrap_model(trainer.model).objective
    original = objective.forward
    calls = {"n": 0}

    def poisoned(views):
        calls["n"] += 1
        out = original(views)
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(objective, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        trainer.fit()


def test_gradient_accumulation_consumes_micro_batches_per_step(tiny_overrides):
    """Each optimizer step consumes grad_accum_steps micro-batches (the data position is what resumes)."""
    config = build_config(
        RECIPE, [*tiny_overrides, "trainer.grad_accum_steps=2", "trainer.batch_size=4", "trainer.max_steps=2"]
    )
    trainer = Trainer(config)
    result = trainer.fit()
    assert result.step == 2
    assert trainer.state.batch_in_epoch + trainer.state.epoch * trainer.sampler.batches_per_epoch == 4


def test_trainers_with_different_precisions_run_in_one_process(tiny_overrides, tmp_path):
    # accelerate's process-wide state must not pin the first run's precision on the next.
    for precision in ("bf16", "fp32"):
        config = build_config(
            RECIPE,
            [
                *tiny_overrides,
                "trainer.max_steps=1",
                f"trainer.precision={precision}",
                f"trainer.run_dir={tmp_path}/{precision}",
            ],
        )
        assert pretrain(config).status == "finished"
