"""The online val kNN (``trainer.eval_every``): the fixed subsets, the score against the offline kNN on the
same images, the rows it writes, and that it never changes training."""

from __future__ import annotations

import json

import pytest
import torch

from equissl.config import build_config
from equissl.knn import knn_top1
from equissl.launch.checkpoint import latest_checkpoint, load_model_state
from equissl.launch.online_eval import OnlineKNN, due, fixed_indices
from equissl.launch.trainer import pretrain


def test_fixed_indices_are_evenly_spaced_and_bounded():
    assert fixed_indices(10, 4).tolist() == [0, 3, 6, 9]  # linspace(0, 9, 4) = 0, 3, 6, 9
    assert fixed_indices(7, 3).tolist() == [0, 3, 6]
    assert fixed_indices(5, 100).tolist() == [0, 1, 2, 3, 4]
    # 10 classes of 20 class-ordered items: 40 indices take 4 of every class
    labels = torch.arange(200) // 20
    assert torch.bincount(labels[fixed_indices(200, 40)]).tolist() == [4] * 10


def test_due_every_n_steps_and_at_the_last():
    config = build_config(None, ["trainer.eval_every=4", "trainer.max_steps=10"])
    assert [step for step in range(1, 11) if due(config, step)] == [4, 8, 10]
    assert not any(due(build_config(None, ["trainer.max_steps=10"]), step) for step in range(1, 11))


def test_online_knn_equals_the_offline_knn_of_its_images(tiny_overrides, tiny_backbone):
    config = build_config(None, [*tiny_overrides, "trainer.eval_samples=12", "probe.knn_k=3"])
    online = OnlineKNN(config)
    assert len(online.bank_labels) == 12 and len(online.query_labels) == 12  # of 80 train, 40 val images
    assert online.query_labels.tolist() == [
        0,
        1,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        8,
        9,
    ]  # round(linspace(0, 39, 12)) // 4
    tiny_backbone.train()
    scores = online(tiny_backbone)
    assert tiny_backbone.training  # left as it was
    from equissl.augmentations.eval_views import resized_view

    with torch.no_grad():
        tiny_backbone.eval()
        view = (32, config.augment.mean, config.augment.std)
        bank = tiny_backbone(resized_view(online.bank_images, *view))
        queries = tiny_backbone(resized_view(online.query_images, *view))
    expected = knn_top1(
        bank, online.bank_labels, queries, online.query_labels, 3, config.probe.knn_temperature
    )
    assert scores["val/knn_top1"] == pytest.approx(expected, abs=1e-9)
    assert scores["val/knn_seconds"] >= 0


def test_a_run_with_online_eval_logs_val_knn_and_trains_the_same_weights(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "trainer.max_steps=4", "trainer.checkpoint_every=4", "trainer.eval_samples=20"]
    off = build_config(None, [*base, f"trainer.run_dir={tmp_path}/off"])
    on = build_config(None, [*base, f"trainer.run_dir={tmp_path}/on", "trainer.eval_every=2"])
    pretrain(off)
    pretrain(on)
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "val/knn_top1" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    assert all(0.0 <= row["val/knn_top1"] <= 100.0 and row["val/knn_seconds"] > 0 for row in evaluated)
    assert not any("val/knn_top1" in json.loads(line) for line in (tmp_path / "off" / "metrics.jsonl").open())
    weights_off = load_model_state(latest_checkpoint(tmp_path / "off"))
    weights_on = load_model_state(latest_checkpoint(tmp_path / "on"))
    assert weights_off.keys() == weights_on.keys()
    for key, value in weights_off.items():
        assert torch.equal(value, weights_on[key]), key
    events = list((tmp_path / "on" / "tensorboard").glob("events.out.tfevents.*"))
    assert events  # the scalars go to TensorBoard too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "on" / "tensorboard"))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("val/knn_top1")] == [2, 4]
