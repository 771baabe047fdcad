"""``equissl embed``: PCA against a hand-computed case, the 2-D kNN score, the optional packages' errors,
and the saved arrays and figure of a tiny run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from equissl.errors import MissingExtraError
from equissl.eval.embed import EmbedConfig, map_knn_top1, pca_2d, project


def test_pca_2d_recovers_the_principal_axes_hand_computed():
    # x spreads far more than y, y is uncorrelated with x (sum (x - 7.5) y = 0), z is constant: the first
    # coordinate is x - mean(x), the second +-(y - mean(y)), sign fixed so its largest magnitude (2) is positive
    x = torch.tensor([[-10.0, -1.0, 5.0], [0.0, 0.0, 5.0], [10.0, 2.0, 5.0], [30.0, -1.0, 5.0]])
    coords = pca_2d(x)
    torch.testing.assert_close(coords[:, 0], torch.tensor([-17.5, -7.5, 2.5, 22.5]))
    torch.testing.assert_close(coords[:, 1], torch.tensor([-1.0, 0.0, 2.0, -1.0]), atol=1e-5, rtol=0)
    assert coords[coords[:, 0].abs().argmax(), 0] > 0  # the sign convention: largest magnitude positive
    torch.testing.assert_close(pca_2d(-x), coords)  # so a mirrored cloud maps to the same picture


def test_map_knn_top1_counts_leave_one_out_votes():
    coords = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [0.05, 0.1]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # k=1: each point's nearest other point; the last (label 1) sits among label 0 -> 4 of 5 right
    assert map_knn_top1(coords, labels, k=1) == pytest.approx(80.0)


def test_missing_packages_name_their_install_line(monkeypatch):
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'equissl\[viz\]'.*umap-learn"):
        project(x, "umap", EmbedConfig())
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(MissingExtraError, match="scikit-learn"):
        project(x, "tsne", EmbedConfig())
    assert project(x, "pca", EmbedConfig()).shape == (12, 2)  # no extra needed


def test_embed_cli_saves_embeddings_labels_and_a_figure(tiny_overrides, tmp_path, capsys):
    pytest.importorskip("sklearn")
    from equissl.cli import main
    from equissl.config import build_config
    from equissl.launch.trainer import pretrain

    pretrain(build_config(None, [*tiny_overrides, "trainer.max_steps=2"]))
    run = tmp_path / "run"
    assert main(["embed", "--run", str(run), "--plot", "tsne", "--compare-random", "perplexity=5"]) == 0
    assert "10-NN top-1 in the 2-D map" in capsys.readouterr().out
    out = run / "eval" / "embed"
    for model in ("pretrained", "random-init"):
        features = np.load(out / f"{model}_val_features.npy")
        labels = np.load(out / f"{model}_val_labels.npy")
        coords = np.load(out / f"{model}_val_tsne.npy")
        assert (
            features.shape[0] == labels.shape[0] == coords.shape[0] == 40
        )  # 10 classes x 1 object x 4 views
        assert coords.shape[1] == 2 and sorted(set(labels.tolist())) == list(range(10))
    assert (out / "embed_tsne.png").stat().st_size > 10_000
    monkey = ["embed", "--run", str(run), "--plot", "umap"]
    sys.modules["umap"], saved = None, sys.modules.get("umap")
    try:
        assert main(monkey) == 2
    finally:
        if saved is None:
            del sys.modules["umap"]
        else:
            sys.modules["umap"] = saved
    assert "pip install 'equissl[viz]'" in capsys.readouterr().err
