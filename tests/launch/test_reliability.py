"""Reliability as clusters and users treat a job: signals to the whole process group, to torchrun and to
`equissl launch`; resumes with changed settings; damaged checkpoints; exports, run directories and bad data.

Each case is written as the failing case first: the signal, the changed setting or the damaged file, then
what must hold.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from equissl.config import build_config
from equissl.errors import ConfigError, UserError
from equissl.launch import checkpoint as ckpt
from equissl.launch.optim import warmup_cosine
from equissl.launch.trainer import Trainer, pretrain
from equissl.runs import load_run

RECIPE = "simclr_resnet18_shapes3d"


def _start(args: list[str]) -> subprocess.Popen:
    """The command line in a process group of its own (as a shell job or a scheduler's task)."""
    return subprocess.Popen(
        [sys.executable, "-m", "equissl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {process.communicate()}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def _no_torn_checkpoints(run: Path) -> bool:
    return not list(ckpt.checkpoint_root(run).glob("*.tmp"))


# ----------------------------------------------------------------------------------------------------
# Signals


def test_sigterm_to_the_process_group_with_data_workers_checkpoints_and_exits_zero(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    args = [
        "pretrain",
        "--config",
        RECIPE,
        *tiny_overrides,
        "data.num_workers=2",
        "trainer.max_steps=400",
        "trainer.checkpoint_every=1000",
    ]
    process = _start(args)
    _wait_for(lambda: len(_logged_steps(run)) >= 2, process)
    os.killpg(process.pid, signal.SIGTERM)  # the process and its DataLoader workers, as SLURM / systemd do
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert "interrupted" in out and "Traceback" not in err
    latest = ckpt.latest_checkpoint(run)
    state = ckpt.load_trainer_state(latest)
    assert 2 <= state.step < 400 and not state.finished and _no_torn_checkpoints(run)
    ckpt.verify(latest)
    assert _logged_steps(run) == list(range(1, state.step + 1))


def test_a_second_signal_aborts_at_once_in_one_line_and_keeps_the_last_checkpoint(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    process = _start(["pretrain", "--config", RECIPE, *tiny_overrides, "trainer.max_steps=400"])
    _wait_for(lambda: ckpt.latest_checkpoint(run) is not None, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C ...
    first = process.stderr.readline()  # (signals do not queue: wait until the first one was handled)
    assert first.startswith("SIGINT: finishing this step"), first
    os.killpg(process.pid, signal.SIGINT)  # ... and again, before the step ends
    _, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("equissl pretrain: interrupted") and "Traceback" not in err
    kept = ckpt.latest_checkpoint(run)
    ckpt.verify(kept)  # complete and whole: the abort cannot tear it
    result = pretrain(
        build_config(RECIPE, [*tiny_overrides, f"trainer.max_steps={ckpt.load_trainer_state(kept).step + 2}"])
    )
    assert result.status == "finished"


def test_sigterm_to_equissl_launch_reaches_both_torchrun_ranks_and_leaves_no_orphans(
    tiny_overrides, tmp_path
):
    run = tmp_path / "run"
    args = [
        "launch",
        "--config",
        RECIPE,
        "--nproc-per-node",
        "2",
        "--device",
        "cpu",
        *tiny_overrides,
        "trainer.batch_size=4",
        "trainer.max_steps=400",
        "trainer.checkpoint_every=1000",
    ]
    process = _start(args)
    _wait_for(lambda: len(_logged_steps(run)) >= 2, process, timeout=300)
    process.send_signal(
        signal.SIGTERM
    )  # to the launcher only: it forwards to torchrun, torchrun to the ranks
    out, err = process.communicate(timeout=300)
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None, err
    ckpt.verify(latest)
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= {p.name for p in latest.iterdir()}
    assert _no_torn_checkpoints(run) and not ckpt.load_trainer_state(latest).finished
    assert "run the same command to resume" in out + err
    leftover = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", "processes outlived the launcher"


# ----------------------------------------------------------------------------------------------------
# Resume never lies


@pytest.fixture
def four_steps(tiny_overrides, tmp_path):
    """A run of 4 steps with checkpoints at steps 2 and 4; returns (overrides, run dir)."""
    overrides = [*tiny_overrides, "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    assert pretrain(build_config(RECIPE, overrides)).status == "finished"
    return overrides, tmp_path / "run"


def test_a_changed_learning_rate_is_refused_unless_overridden_and_then_takes_effect(four_steps, capsys):
    overrides, run = four_steps
    saved = (run / "config.yaml").read_bytes()
    changed = build_config(RECIPE, [*overrides, "optim.lr=1e-4", "trainer.max_steps=6"])
    with pytest.raises(ConfigError, match=r"optim.lr 0.002 -> 0.0001.*--override-optim"):
        pretrain(changed)
    assert (run / "config.yaml").read_bytes() == saved  # never overwritten with a config not used
    assert pretrain(changed, override_optim=True).status == "finished"
    assert "optim.lr 0.002 -> 0.0001" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]  # max_steps 4 -> 6 took effect too
    oc = changed.optim
    for row in rows[4:]:  # the new base lr, on the schedule of the new max_steps
        expected = 1e-4 * warmup_cosine(row["step"], 6, oc.warmup_steps, oc.min_lr_ratio)
        assert row["lr"] == pytest.approx(expected, rel=1e-6)
    assert build_config(run / "config.yaml").optim.lr == pytest.approx(1e-4)  # the config now in use


def test_override_optim_cannot_regroup_the_parameters_of_the_checkpoint_optimizer(four_steps):
    """optim.lr_scales on a resume splits the projector into its own parameter group, which the
    checkpoint's optimizer state has no slot for: refused in one line before a step, nothing written."""
    overrides, run = four_steps
    saved = (run / "config.yaml").read_bytes()
    changed = build_config(RECIPE, [*overrides, "optim.lr_scales.projector=2", "trainer.max_steps=6"])
    with pytest.raises(ConfigError, match="group the parameters differently"):
        pretrain(changed, override_optim=True)
    assert (run / "config.yaml").read_bytes() == saved
    assert _logged_steps(run) == [1, 2, 3, 4]


def test_override_optim_gives_a_module_its_new_learning_rate_multiplier(tiny_overrides, tmp_path):
    """optim.lr_scales.projector 2 -> 3 on a resume with --override-optim (same parameter groups): the
    projector's group restarts its schedule from 3 x the base rate, every other group from 1 x."""
    first = [
        *tiny_overrides,
        "trainer.max_steps=4",
        "trainer.checkpoint_every=2",
        "optim.lr_scales.projector=2",
    ]
    assert pretrain(build_config(RECIPE, first)).status == "finished"
    resumed = [*first, "optim.lr_scales.projector=3", "trainer.max_steps=6"]
    assert pretrain(build_config(RECIPE, resumed), override_optim=True).status == "finished"
    newest = next(iter(ckpt.usable_checkpoints(tmp_path / "run")))
    base = build_config(RECIPE, resumed).optim.lr
    groups = ckpt.load_torch(newest, "optimizer.pt")["param_groups"]
    assert sorted({g.get("lr_scale", 1.0) for g in groups}) == [1.0, 3.0]
    starts = ckpt.load_torch(newest, "scheduler.pt")["base_lrs"]
    assert starts == [pytest.approx(base * g.get("lr_scale", 1.0)) for g in groups]


def test_a_changed_objective_is_refused_with_the_diff_and_how_to_start_anew(four_steps):
    overrides, run = four_steps
    saved = (run / "config.yaml").read_bytes()
    changed = build_config(RECIPE, [*overrides, "objective.temperature=0.5", "trainer.max_steps=6"])
    with pytest.raises(ConfigError, match=r"objective.temperature 0.2 -> 0.5.*name="):
        pretrain(changed)
    assert (run / "config.yaml").read_bytes() == saved


def test_metrics_do_not_repeat_steps_after_a_resume_from_an_earlier_checkpoint(four_steps):
    overrides, run = four_steps
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n" + '{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    pretrain(build_config(RECIPE, [*overrides, "trainer.max_steps=6"]))  # as after a kill past step 4
    assert _logged_steps(run) == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------------------------------
# Damaged files


def _damage(checkpoint: Path, how: str) -> None:
    if how == "truncated model":
        data = (checkpoint / "model.safetensors").read_bytes()
        (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "missing model":
        (checkpoint / "model.safetensors").unlink()
    elif how == "missing optimizer":
        (checkpoint / "optimizer.pt").unlink()
    elif how == "bad state":
        (checkpoint / "trainer_state.json").write_text('{"step": "four"')


class _Payload:
    """Unpickling this would create a file: the proof that a checkpoint executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["truncated model", "missing model", "missing optimizer", "bad state"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(four_steps, how, capsys):
    overrides, run = four_steps
    newest, previous = ckpt.complete_checkpoints(run)[::-1]
    _damage(newest, how)
    with pytest.warns(UserWarning, match=str(newest)):
        _, used = load_run(run)  # what probe, knn, equivariance and export read
    assert used == previous
    with pytest.warns(UserWarning, match="damaged checkpoint"):
        result = pretrain(build_config(RECIPE, [*overrides, "trainer.max_steps=5"]))
    assert result.status == "finished" and "resumed from" in capsys.readouterr().out
    assert _logged_steps(run) == [1, 2, 3, 4, 5]  # resumed at step 2: steps 3 and 4 again, each logged once


def test_a_tampered_optimizer_file_is_skipped_and_never_executed(four_steps, tmp_path):
    overrides, run = four_steps
    newest = ckpt.latest_checkpoint(run)
    marker = tmp_path / "executed"
    with open(newest / "optimizer.pt", "wb") as handle:
        pickle.dump({"state": _Payload(marker)}, handle)
    ckpt.write_manifest(newest)  # even with a matching manifest, loading must not run the pickle
    with pytest.warns(UserWarning, match="optimizer.pt|UnpicklingError|damaged"):
        pretrain(build_config(RECIPE, [*overrides, "trainer.max_steps=5"]))
    assert not marker.exists()


def test_export_refuses_a_directory_and_the_checkpoints_own_files(four_steps, capsys):
    from equissl.cli import main

    _, run = four_steps
    inside = ckpt.latest_checkpoint(run) / "model.safetensors"
    before = inside.read_bytes()
    assert main(["export", "--run", str(run), "--out", str(inside)]) == 2
    assert "must not overwrite checkpoint files" in capsys.readouterr().err
    assert inside.read_bytes() == before
    assert main(["export", "--run", str(run), "--out", str(run)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_an_unwritable_or_full_run_directory_fails_before_training(tiny_overrides, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = build_config(RECIPE, [*tiny_overrides, f"trainer.run_dir={blocker}/run"])
    with pytest.raises(UserError, match="is not writable"):
        Trainer(config).fit()
    import shutil

    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1024, 1024)
    )
    with pytest.raises(UserError, match="MiB free; a checkpoint of this run needs"):
        Trainer(build_config(RECIPE, tiny_overrides)).fit()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------------
# Data


def test_one_zero_byte_file_in_the_first_batch_does_not_stop_the_run(
    tiny_overrides, tiny_shapes3d_root, tmp_path
):
    import shutil

    import numpy as np

    from equissl.launch.sampler import ResumableSampler

    root = tmp_path / "data"
    shutil.copytree(tiny_shapes3d_root, root)
    objects = [str(p).strip("/") for p in np.load(root / "train_images.npy")]
    first = ResumableSampler(len(objects) * 4, 8, seed=0).epoch_indices(0)[0].item()
    (root / objects[first // 4] / f"image_{first % 4}.jpg").write_bytes(b"")
    config = build_config(RECIPE, [*tiny_overrides, f"data.root={root}", "trainer.max_steps=2"])
    with pytest.warns(RuntimeWarning):
        result = Trainer(config).fit()  # 1 of 9 items read at step 1 is bad: 11% > 5%, but 9 < 80 items
    assert result.status == "finished"
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["data/bad_reads"] == 1


def test_the_abort_still_triggers_once_enough_items_were_read(tiny_overrides, tiny_shapes3d_root, tmp_path):
    from equissl.errors import BadDataError

    root = tmp_path / "data"
    import shutil

    shutil.copytree(tiny_shapes3d_root, root)
    for image in list(root.rglob("image_0.jpg")) + list(root.rglob("image_1.jpg")):
        image.write_bytes(b"")  # half the images
    config = build_config(
        RECIPE,
        [*tiny_overrides, f"data.root={root}", "trainer.max_steps=40", "data.min_items_before_abort=16"],
    )
    with pytest.warns(RuntimeWarning), pytest.raises(BadDataError, match="data.max_bad_fraction"):
        Trainer(config).fit()


# ----------------------------------------------------------------------------------------------------
# Hangs


def _hang_worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    trainer = Trainer(build_config(RECIPE, overrides))
    if rank == 1:  # alive but stuck from its third step on (a deadlocked data pipeline, a hung GPU)
        original, calls = trainer.view_maker, {"n": 0}

        def stuck(batch, generator):
            calls["n"] += 1
            if calls["n"] >= 3:
                time.sleep(3600)
            return original(batch, generator)

        trainer.view_maker = stuck
    try:
        trainer.fit()
    except Exception as error:  # noqa: BLE001 (the test reads what rank 0 reports)
        Path(out).write_text(f"{type(error).__name__}: {error}")


def test_a_hung_rank_ends_the_job_with_a_message_that_names_it(tiny_overrides, tmp_path):
    import torch.multiprocessing as mp

    from equissl.launch.launcher import free_port

    out = tmp_path / "rank0.txt"
    overrides = [
        *tiny_overrides,
        "trainer.device=cpu",
        "trainer.batch_size=4",
        "trainer.max_steps=50",
        "trainer.collective_timeout_s=8",
    ]
    context = mp.start_processes(
        _hang_worker, args=(free_port(), overrides, str(out)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        deadline = time.time() + 240
        while not out.exists():
            assert time.time() < deadline, "rank 0 kept waiting"
            time.sleep(0.2)
        text = out.read_text()
        assert text.startswith("RunStopped") and "trainer.collective_timeout_s=8" in text, text
        assert "rank(s) 1 did not answer" in text, text  # the rank that did not answer is named
    finally:
        for process in context.processes:
            process.kill()
