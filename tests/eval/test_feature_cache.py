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


def test_equivariance_cache_is_keyed_by_weights_and_settings(monkeypatch, tmp_path):
    import torch

    import equissl.eval.equivariance_report as report_module
    from equissl.eval.equivariance_report import EquivarianceEvalConfig, cached_split

    calls = []

    def fake_extract(objective, config, split, settings, device):
        calls.append((split, settings.max_objects))
        return {"full": torch.full((2, 3), float(len(calls))), "objects": torch.tensor([0, 0])}

    monkeypatch.setattr(report_module, "extract_split", fake_extract)
    config = build_config(None, [])
    settings = EquivarianceEvalConfig()
    first = cached_split(None, config, "val", settings, tmp_path, "sha256:aaa")
    again = cached_split(None, config, "val", settings, tmp_path, "sha256:aaa")
    assert len(calls) == 1 and torch.equal(first["full"], again["full"])
    retrained = cached_split(None, config, "val", settings, tmp_path, "sha256:bbb")  # same path, new weights
    assert len(calls) == 2 and float(retrained["full"][0, 0]) == 2.0
    cached_split(None, config, "val", EquivarianceEvalConfig(max_objects=5), tmp_path, "sha256:aaa")
    cached_split(
        None, build_config(None, ["augment.mean=[0.5,0.5,0.5]"]), "val", settings, tmp_path, "sha256:aaa"
    )
    assert calls == [("val", 0), ("val", 0), ("val", 5), ("val", 0)]  # other settings: extracted again


def test_checkpoint_digest_follows_content_not_path(tmp_path):
    from equissl.eval.features import checkpoint_digest

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, payload in ((a, b"weights-1"), (b, b"weights-1")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "optimizer.pt").write_bytes(folder.name.encode())  # not weights: ignored
    assert checkpoint_digest(a) == checkpoint_digest(b)
    (b / "model.safetensors").write_bytes(b"weights-2")
    assert checkpoint_digest(a) != checkpoint_digest(b)
