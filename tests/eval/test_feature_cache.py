"""Feature caches are keyed by what the features depend on -- the checkpoint's content and the
evaluation settings -- never by the checkpoint's path: retraining a run to the same step must not reuse
the features of the weights it replaced."""

from __future__ import annotations

import shutil

import pytest

import equissl.eval.features as features_module
from equissl.config import build_config
from equissl.eval.knn import knn_top1
from equissl.eval.report import evaluate_run
from equissl.launch.trainer import pretrain
from equissl.runs import load_backbone, load_run


@pytest.fixture
def count_extractions(monkeypatch):
    calls = []
    original = features_module.extract_features

    def counting(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("split"))
        return original(*args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", counting)
    return calls


def test_a_run_retrained_to_the_same_step_gets_fresh_features(tiny_overrides, tmp_path, count_extractions):
    overrides = [*tiny_overrides, "trainer.max_steps=2"]
    run = tmp_path / "run"
    pretrain(build_config(None, overrides))
    evaluate_run(run, methods=("knn",))
    assert sorted(count_extractions) == ["train", "val"]
    evaluate_run(run, methods=("knn",))  # same weights, same settings: the cache answers
    assert sorted(count_extractions) == ["train", "val"]

    shutil.rmtree(run / "checkpoints")  # retrain to the same step, with other weights, at the same path
    pretrain(build_config(None, [*overrides, "optim.lr=0.05", "trainer.seed=3"]))
    report = evaluate_run(run, methods=("knn",))
    assert sorted(count_extractions) == ["train", "train", "val", "val"]

    config, checkpoint = load_run(run)
    backbone = load_backbone(config, checkpoint)
    train_x, train_y = features_module.extract_features(backbone, config, "train")
    val_x, val_y = features_module.extract_features(backbone, config, "val")
    expected = knn_top1(train_x, train_y, val_x, val_y, config.probe.knn_k, config.probe.knn_temperature)
    assert report["results"]["pretrained"]["knn"] == pytest.approx(expected, abs=1e-9)
