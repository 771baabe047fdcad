"""Faults the loop must survive or stop on: non-finite steps (stop with the batch saved, or skip up to a
limit), unreadable images (skipped and counted across DataLoader workers, abort past a bad fraction),
and a data item that raises (its file is named)."""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from equissl.config import build_config
from equissl.errors import BadDataError, DataItemError, NonFiniteLossError
from equissl.launch.sampler import ResumableSampler
from equissl.launch.trainer import Trainer

RECIPE = "simclr_resnet18_shapes3d"
VIEWS = 4  # data.views_per_object of the tiny render (tests/conftest.py)


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient norm is not."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad * float("nan")


def _poison(trainer: Trainer, monkeypatch, calls: dict[int, str]) -> None:
    """Make the objective's n-th forward call return a NaN loss ("loss") or a NaN gradient ("grad")."""
    objective = trainer.accelerator.unwrap_model(trainer.model).objective
    original, count = objective.forward, {"n": 0}

    def poisoned(views):
        count["n"] += 1
        out = original(views)
        kind = calls.get(count["n"])
        if kind == "loss":
            out.loss = out.loss * float("nan")
        elif kind == "grad":
            out.loss = _NaNGradient.apply(out.loss)
        return out

    monkeypatch.setattr(objective, "forward", poisoned)


def test_non_finite_loss_stops_and_saves_the_offending_batch(tiny_overrides, tmp_path, monkeypatch):
    trainer = Trainer(build_config(RECIPE, [*tiny_overrides, "trainer.max_steps=4"]))
    _poison(trainer, monkeypatch, {3: "loss"})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2") as error:
        trainer.fit()
    saved = tmp_path / "run" / "nonfinite" / "step-2.pt"
    assert str(saved) in str(error.value)
    record = torch.load(saved, weights_only=True)
    assert record["step"] == 2 and record["rank"] == 0 and not torch.isfinite(record["losses"]).all()
    (batch,) = record["micro_batches"]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 3, 32, 32)


def test_skip_option_skips_counted_steps_up_to_its_limit(tiny_overrides, tmp_path, monkeypatch):
    config = build_config(RECIPE, [*tiny_overrides, "trainer.max_steps=3", "trainer.skip_nonfinite_steps=2"])
    trainer = Trainer(config)
    _poison(trainer, monkeypatch, {2: "loss", 4: "grad"})
    result = trainer.fit()
    assert result.status == "finished" and result.step == 3 and trainer.state.skipped_steps == 2
    assert sorted(p.name for p in (tmp_path / "run" / "nonfinite").iterdir()) == ["step-1.pt", "step-2.pt"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["train/skipped_steps"] == 2
    assert all(np.isfinite(r["grad_norm"]) for r in rows)

    trainer = Trainer(
        build_config(
            RECIPE,
            [
                *tiny_overrides,
                "trainer.max_steps=3",
                "trainer.skip_nonfinite_steps=1",
                f"trainer.run_dir={tmp_path}/limited",
            ],
        )
    )
    _poison(trainer, monkeypatch, {1: "grad", 2: "grad"})
    with pytest.raises(
        NonFiniteLossError, match="non-finite gradient norm at step 0.*1 steps skipped before"
    ):
        trainer.fit()


@pytest.fixture
def corrupt_root(tiny_shapes3d_root, tmp_path):
    """A copy of the tiny render with 3 bad training images among the first 32 items the sampler serves
    (4 steps of 8): truncated, empty, and a PNG named .jpg."""
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_shapes3d_root, root)
    objects = [str(p).strip("/") for p in np.load(root / "train_images.npy")]
    served = ResumableSampler(len(objects) * VIEWS, 8, seed=0).epoch_indices(0)[:32].tolist()
    chosen = [i for i in served if i % VIEWS != VIEWS - 1][:3]  # the fallback item (next view) is readable
    assert len({i // VIEWS for i in chosen}) == 3
    bad = [root / objects[i // VIEWS] / f"image_{i % VIEWS}.jpg" for i in chosen]
    bad[0].write_bytes(bad[0].read_bytes()[:100])
    bad[1].write_bytes(b"")
    png = io.BytesIO()
    Image.new("L", (32, 32)).save(png, format="PNG")
    bad[2].write_bytes(png.getvalue())
    return root, bad


def test_corrupt_files_are_skipped_and_counted_across_workers(tiny_overrides, corrupt_root, tmp_path):
    root, bad = corrupt_root
    config = build_config(
        RECIPE,
        [
            *tiny_overrides,
            f"data.root={root}",
            "data.num_workers=2",
            "trainer.max_steps=4",
            "data.max_bad_fraction=0.5",
            "trainer.checkpoint_every=100",
        ],
    )
    result = Trainer(config).fit()  # the warnings stay in the worker processes
    assert result.status == "finished"
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["data/bad_reads"] == len(bad)
    assert last["data/bad_fraction"] == pytest.approx(len(bad) / (32 + len(bad)))


def test_too_many_bad_files_abort_with_a_clear_message(tiny_overrides, corrupt_root):
    root, bad = corrupt_root
    config = build_config(
        RECIPE, [*tiny_overrides, f"data.root={root}", "trainer.max_steps=10", "data.max_bad_fraction=0.01"]
    )
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(BadDataError, match=r"data.max_bad_fraction=0.01") as error,
    ):
        Trainer(config).fit()
    assert any(str(path) in str(error.value) for path in bad)


def test_a_crashing_data_worker_names_the_file(tiny_overrides, monkeypatch):
    trainer = Trainer(build_config(RECIPE, [*tiny_overrides, "data.num_workers=1"]))

    def broken(object_index, view):
        raise KeyError("decoder exploded")

    monkeypatch.setattr(trainer.dataset, "_load_view", broken)
    children_before = set(multiprocessing.active_children())
    with pytest.raises(
        DataItemError, match=r"reading data item \d+ \(.*image_\d\.jpg\) failed: KeyError"
    ) as error:
        trainer.fit()
    # the traceback kept in ``error`` holds the loader's frames; its worker must be gone all the same (it
    # ignores SIGTERM, so a live one would hang the interpreter's exit, which ends children with SIGTERM)
    assert error.traceback
    assert set(multiprocessing.active_children()) <= children_before
