"""Loss functions: equality with independent references, properties, closed forms, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from equissl.ssl.losses import (
    byol_loss,
    covariance_loss,
    invariance_loss,
    negative_cosine_loss,
    nt_xent,
    rotation_loss,
    variance_loss,
    vicreg_loss,
)


def _pair(n: int = 6, d: int = 5, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# NT-Xent


def nt_xent_reference(z_a, z_b, temperature, same_view_negatives=True) -> float:
    """The paper's Algorithm 1 with explicit loops: samples interleaved as (2k, 2k+1)."""
    views = []
    for a, b in zip(z_a.tolist(), z_b.tolist()):
        views += [a, b]

    def cosine(u, v):
        dot = sum(x * y for x, y in zip(u, v))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    total = 0.0
    for i in range(len(views)):
        partner = i + 1 if i % 2 == 0 else i - 1
        denominator = 0.0
        for k in range(len(views)):
            if k == i or (not same_view_negatives and k % 2 == i % 2):
                continue
            denominator += math.exp(cosine(views[i], views[k]) / temperature)
        total += -(cosine(views[i], views[partner]) / temperature - math.log(denominator))
    return total / len(views)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("same_view_negatives", [True, False])
def test_nt_xent_matches_loop_reference(temperature, same_view_negatives):
    z_a, z_b = _pair()
    expected = nt_xent_reference(z_a, z_b, temperature, same_view_negatives)
    assert nt_xent(z_a, z_b, temperature, same_view_negatives).item() == pytest.approx(expected, rel=1e-10)


def test_nt_xent_float32_matches_float64():
    z_a, z_b = _pair()
    assert nt_xent(z_a.float(), z_b.float(), 0.2).item() == pytest.approx(
        nt_xent(z_a, z_b, 0.2).item(), rel=1e-5
    )


def test_nt_xent_collapsed_embeddings():
    # all 2N embeddings equal: every similarity is 1, so each anchor's loss is log(#candidates)
    n = 5
    z = torch.ones(n, 3, dtype=torch.float64)
    assert nt_xent(z, z, 0.3).item() == pytest.approx(math.log(2 * n - 1))
    assert nt_xent(z, z, 0.3, same_view_negatives=False).item() == pytest.approx(math.log(n))


def test_nt_xent_orthonormal_positive_pairs():
    # z_a = z_b = e_i: positive similarity 1, the 2N - 2 negatives 0
    n, t = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent(z, z, t).item() == pytest.approx(expected)


def test_nt_xent_symmetric_permutation_and_scale_invariant():
    z_a, z_b = _pair(n=7)
    loss = nt_xent(z_a, z_b, 0.5)
    assert nt_xent(z_b, z_a, 0.5).item() == pytest.approx(loss.item(), rel=1e-12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    assert nt_xent(z_a[perm], z_b[perm], 0.5).item() == pytest.approx(loss.item(), rel=1e-12)
    scale = torch.rand(7, 1, dtype=torch.float64) + 0.5  # cosine similarity ignores norms
    assert nt_xent(z_a * scale, z_b * 3, 0.5).item() == pytest.approx(loss.item(), rel=1e-12)


def test_nt_xent_gradients_finite_and_correct():
    z_a, z_b = _pair(n=4, d=3)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z_a, z_b))


def test_nt_xent_errors():
    z_a, z_b = _pair()
    with pytest.raises(ValueError, match="differ in shape"):
        nt_xent(z_a, z_b[:-1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nt_xent(z_a[0], z_b[0])
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z_a, z_b, 0.0)


def test_nt_xent_computes_in_float32_under_autocast():
    z_a, z_b = _pair(dtype=torch.float32)
    expected = nt_xent(z_a, z_b, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nt_xent(z_a, z_b, 0.1)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# VICReg


def variance_reference(z, gamma=1.0, eps=1e-4) -> float:
    n, d = z.shape
    total = 0.0
    for j in range(d):
        column = z[:, j].tolist()
        mean = sum(column) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in column) / (n - 1) + eps)
        total += max(0.0, gamma - std)
    return total / d


def covariance_reference(z) -> float:
    n, d = z.shape
    columns = [z[:, j].tolist() for j in range(d)]
    means = [sum(c) / n for c in columns]
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                c = sum((columns[i][k] - means[i]) * (columns[j][k] - means[j]) for k in range(n)) / (n - 1)
                total += c * c
    return total / d


def test_invariance_matches_reference():
    z_a, z_b = _pair()
    expected = sum((a - b) ** 2 for a, b in zip(z_a.flatten().tolist(), z_b.flatten().tolist())) / z_a.numel()
    assert invariance_loss(z_a, z_b).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scale", [0.3, 3.0])  # below / above the hinge
def test_variance_matches_reference(scale):
    z, _ = _pair(n=9, d=4)
    z = z * scale
    assert variance_loss(z).item() == pytest.approx(variance_reference(z), rel=1e-10, abs=1e-12)
    assert variance_loss(z, gamma=2.0, eps=0.1).item() == pytest.approx(
        variance_reference(z, 2.0, 0.1), rel=1e-10
    )


@pytest.mark.parametrize("n,d", [(4, 9), (9, 4)])  # the Gram (N < D) and the covariance path
def test_covariance_matches_reference(n, d):
    z, _ = _pair(n=n, d=d)
    assert covariance_loss(z).item() == pytest.approx(covariance_reference(z), rel=1e-10)


def test_vicreg_matches_reference_and_weights():
    z_a, z_b = _pair(n=8, d=5)
    total, terms = vicreg_loss(z_a, z_b, sim=2.0, var=3.0, cov=0.5)
    inv = F.mse_loss(z_a, z_b).item()
    var = variance_reference(z_a) + variance_reference(z_b)
    cov = covariance_reference(z_a) + covariance_reference(z_b)
    assert terms["inv"].item() == pytest.approx(inv, rel=1e-12)
    assert terms["var"].item() == pytest.approx(var, rel=1e-10)
    assert terms["cov"].item() == pytest.approx(cov, rel=1e-10)
    assert total.item() == pytest.approx(2 * inv + 3 * var + 0.5 * cov, rel=1e-10)
    halved, halved_terms = vicreg_loss(z_a, z_b, sim=2.0, var=3.0, cov=0.5, average_branches=True)
    assert halved_terms["var"].item() == pytest.approx(var / 2, rel=1e-10)
    assert halved.item() == pytest.approx(2 * inv + 1.5 * var + 0.5 * cov, rel=1e-10)


def test_vicreg_collapsed_embeddings_closed_form():
    # identical constant rows: std = sqrt(eps) in every dimension, no covariance, no invariance error
    z = torch.full((6, 4), 0.7, dtype=torch.float64)
    assert variance_loss(z).item() == pytest.approx(1 - math.sqrt(1e-4))  # = 0.99
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-20)
    total, terms = vicreg_loss(z, z.clone())
    assert terms["inv"].item() == 0.0
    assert terms["cov"].item() == pytest.approx(0.0, abs=1e-20)
    assert total.item() == pytest.approx(25 * 2 * 0.99)
    assert vicreg_loss(z, z, average_branches=True)[0].item() == pytest.approx(25 * 0.99)


def test_variance_zero_above_threshold_and_covariance_of_duplicated_dimension():
    x = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) * 5
    assert variance_loss(x[:, None]).item() == 0.0
    # two identical dimensions of variance s: C = [[s, s], [s, s]] -> (2 s^2) / 2
    s = 4 / 3
    assert covariance_loss(torch.stack([x / 5, x / 5], dim=1)).item() == pytest.approx(s * s)


def test_vicreg_symmetric_and_permutation_invariant():
    z_a, z_b = _pair(n=7)
    total = vicreg_loss(z_a, z_b)[0].item()
    assert vicreg_loss(z_b, z_a)[0].item() == pytest.approx(total, rel=1e-12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    assert vicreg_loss(z_a[perm], z_b[perm])[0].item() == pytest.approx(total, rel=1e-12)


def test_vicreg_errors():
    z_a, z_b = _pair()
    with pytest.raises(ValueError, match="differ in shape"):
        vicreg_loss(z_a, z_b[:, :-1])
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(z_a[:1], z_b[:1])
    with pytest.raises(ValueError):
        variance_loss(z_a[:1])
    with pytest.raises(ValueError):
        covariance_loss(z_a[0])


# ----------------------------------------------------------------------------------------------------
# Rotation


def test_rotation_loss_matches_reference_and_errors():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (8,), generator=g)
    expected = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        expected += -(row[label] - math.log(sum(math.exp(v) for v in row)))
    assert rotation_loss(logits, labels).item() == pytest.approx(expected / 8, rel=1e-12)
    # a confident, correct classifier has ~zero loss; uniform logits give log 4
    assert rotation_loss(F.one_hot(labels, 4).double() * 50, labels).item() < 1e-15
    assert rotation_loss(torch.zeros(8, 4), labels).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError):
        rotation_loss(logits, labels[:-1])
    with pytest.raises(ValueError):
        rotation_loss(logits, labels.float())


# ----------------------------------------------------------------------------------------------------
# Cosine losses


def test_negative_cosine_loss_reference_and_closed_forms():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(7, 5, generator=g, dtype=torch.float64)
    t = torch.randn(7, 5, generator=g, dtype=torch.float64)
    pn, tn = p.numpy(), t.numpy()
    cosines = [(pn[i] @ tn[i]) / np.linalg.norm(pn[i]) / np.linalg.norm(tn[i]) for i in range(7)]
    assert negative_cosine_loss(p, t).item() == pytest.approx(1 - np.mean(cosines), abs=1e-12)
    assert negative_cosine_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert negative_cosine_loss(-t, t).item() == pytest.approx(2.0, abs=1e-12)
    e = torch.eye(2, dtype=torch.float64)
    assert negative_cosine_loss(e, e.flip(1)).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        negative_cosine_loss(p, t[:, :4])


def test_byol_loss_is_twice_the_negative_cosine_and_has_closed_forms():
    g = torch.Generator().manual_seed(4)
    p, t = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    reference = np.mean(
        [np.sum((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2) for a, b in zip(p.numpy(), t.numpy())]
    )
    assert byol_loss(p, t).item() == pytest.approx(reference, abs=1e-12)
    assert byol_loss(p, t).item() == pytest.approx(2 * negative_cosine_loss(p, t).item(), abs=1e-12)
    z = torch.randn(4, 8)
    assert float(byol_loss(z, 2 * z)) < 1e-6
    assert math.isclose(float(byol_loss(z, -z)), 4.0, rel_tol=1e-6)
    assert math.isclose(
        float(byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))), 2.0, rel_tol=1e-6
    )
