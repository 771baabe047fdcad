import pytest
import torch

from equissl.config import ProbeConfig
from equissl.eval.knn import knn_predict, knn_top1
from equissl.eval.linear_probe import linear_probe


def test_knn_matches_hand_computed_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.2]])
    # k=3 neighbours by cosine: rows 0, 1, 4; votes exp(s/T): class 0 gets two, class 1 one
    sims = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(query, dim=1).T
    top = sims.squeeze(1).topk(3).indices.tolist()
    assert sorted(top) == [0, 1, 4]
    assert knn_predict(train, labels, query, k=3, temperature=0.1).item() == 0
    # with k=5 and a huge temperature every neighbour weighs ~1: class 1 has three votes
    assert knn_predict(train, labels, query, k=5, temperature=1e6).item() == 1


def test_knn_rejects_bad_k():
    with pytest.raises(ValueError, match="k="):
        knn_top1(torch.randn(3, 2), torch.tensor([0, 1, 0]), torch.randn(1, 2), torch.tensor([0]), k=4)


def test_linear_probe_separates_linearly_separable_classes_but_not_noise():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 3
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=generator)
    cfg = ProbeConfig(epochs=30, batch_size=64, lr=0.05, weight_decays=(0.0, 1e-3))
    good = linear_probe(x[:300], y[:300], x[300:], y[300:], cfg)
    assert good.top1 > 95
    noise = torch.randn(400, 16, generator=generator)
    bad = linear_probe(noise[:300], y[:300], noise[300:], y[300:], cfg)
    assert bad.top1 < 45
    assert set(good.holdout_top1) == {0.0, 1e-3}
