"""The losses of Barlow Twins, MoCo v3 and DINO: independent references written with loops / numpy,
closed forms on degenerate inputs, and where the gradient stops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equissl.ssl.losses import barlow_twins_loss, dino_center_update, dino_loss, momentum_infonce


def _pair(n: int = 6, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


# ----------------------------------------------------------------------------------------------------
# Barlow Twins


def barlow_reference(a: np.ndarray, b: np.ndarray, lam: float, unbiased: bool, eps: float) -> float:
    """Element by element: standardise each column, then C_ij = sum_n a_ni b_nj / N."""
    n, d = a.shape

    def norm(z):
        out = np.empty_like(z)
        for j in range(d):
            column = z[:, j]
            mean = column.sum() / n
            var = ((column - mean) ** 2).sum() / (n - 1 if unbiased else n)
            out[:, j] = (column - mean) / math.sqrt(var + (0.0 if unbiased else eps))
        return out

    a, b = norm(a), norm(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lam * c**2
    return loss


@pytest.mark.parametrize("standardisation", ["std", "batchnorm"])
def test_barlow_twins_matches_element_reference(standardisation):
    z_a, z_b = _pair()
    got, terms = barlow_twins_loss(z_a, z_b, 0.3, standardisation)
    expected = barlow_reference(z_a.numpy(), z_b.numpy(), 0.3, standardisation == "std", 1e-5)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert (terms["on_diag"] + 0.3 * terms["off_diag"]).item() == pytest.approx(expected, rel=1e-10)


def test_barlow_twins_closed_forms():
    # two uncorrelated +-1 columns: unbiased std sqrt(4/3), so C = (3/4) I for identical views
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    loss, terms = barlow_twins_loss(z, z)
    assert loss.item() == pytest.approx(2 * 0.25**2) and terms["off_diag"].item() == pytest.approx(0.0)
    assert barlow_twins_loss(z, -z)[0].item() == pytest.approx(2 * 1.75**2)  # C = -(3/4) I
    assert barlow_twins_loss(z, z, standardisation="batchnorm", eps=0.0)[0].item() == pytest.approx(0.0)
    # a duplicated column is fully redundant: C = [[1, 1], [1, 1]] with the biased standardisation
    dup = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-2.0, -2.0]], dtype=torch.float64)
    loss, terms = barlow_twins_loss(dup, dup, lambda_offdiag=0.5, standardisation="batchnorm", eps=0.0)
    assert terms["off_diag"].item() == pytest.approx(2.0) and loss.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(z[:1], z[:1])


# ----------------------------------------------------------------------------------------------------
# MoCo v3


def infonce_reference(q: np.ndarray, k: np.ndarray, t: float) -> float:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / t for j in range(len(k))]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    return total / len(q) * 2 * t


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_momentum_infonce_matches_loop_reference(temperature):
    q, k = _pair(5, 3, seed=2)
    got = momentum_infonce(q, k, temperature)
    assert got.item() == pytest.approx(infonce_reference(q.numpy(), k.numpy(), temperature), rel=1e-10)
    unscaled = momentum_infonce(q, k, temperature, scale_by_2t=False)
    assert unscaled.item() == pytest.approx(got.item() / (2 * temperature), rel=1e-12)


def test_momentum_infonce_closed_forms_and_no_gradient_to_keys():
    eye = torch.eye(4, dtype=torch.float64)
    t = 0.5  # positive logit 1/t = 2, three negatives at 0
    expected = -math.log(math.exp(2) / (math.exp(2) + 3)) * 2 * t
    assert momentum_infonce(eye, eye, t).item() == pytest.approx(expected)
    assert momentum_infonce(eye[:1], eye[:1], t).item() == pytest.approx(0.0)  # no negatives
    q, k = _pair(4, 3, seed=3)
    q.requires_grad_(True)
    k.requires_grad_(True)
    momentum_infonce(q, k).backward()
    assert k.grad is None and q.grad.abs().sum() > 0  # keys are the momentum encoder's: stop-gradient


# ----------------------------------------------------------------------------------------------------
# DINO


def dino_reference(student, teacher, center, ts, tt) -> float:
    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        p = softmax((t - center) / tt)
        for j, s in enumerate(student):
            if i == j:
                continue
            total += float(np.mean(np.sum(-p * np.log(softmax(s / ts)), axis=1)))
            pairs += 1
    return total / pairs


def test_dino_loss_matches_reference_and_skips_same_crop_pairs():
    g = torch.Generator().manual_seed(4)
    student = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 5, generator=g, dtype=torch.float64)
    got = dino_loss(student, teacher, center, 0.1, 0.04).item()
    expected = dino_reference(
        *(np.stack([x.numpy() for x in xs]) for xs in (student, teacher)), center.numpy(), 0.1, 0.04
    )
    assert got == pytest.approx(expected, rel=1e-10)


def test_dino_loss_closed_forms():
    k = 7
    uniform = [torch.zeros(2, k, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(2, k, dtype=torch.float64) for _ in range(2)]
    # a uniform student has cross entropy log K against any teacher distribution
    assert dino_loss(uniform, teacher, torch.zeros(k, dtype=torch.float64)).item() == pytest.approx(
        math.log(k)
    )
    # a one-hot teacher (sharp) against a student with logit 1 on that class, 0 elsewhere, temperature 1
    hot = torch.zeros(2, k, dtype=torch.float64)
    hot[:, 2] = 50.0
    student = [hot / 50, hot / 50]
    got = dino_loss(student, [hot, hot], torch.zeros(k, dtype=torch.float64), 1.0, 1.0).item()
    assert got == pytest.approx(-(1 - math.log(math.e + k - 1)), rel=1e-9)


def test_dino_center_update_and_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(5)
    teacher = [torch.randn(3, 4, generator=g) for _ in range(2)]
    center = torch.randn(1, 4, generator=g)
    new = dino_center_update(center, teacher, 0.9)
    expected = 0.9 * center + 0.1 * torch.cat(teacher).mean(0, keepdim=True)
    torch.testing.assert_close(new, expected)
    assert not new.requires_grad
    student = [torch.randn(3, 4, generator=g, requires_grad=True) for _ in range(3)]
    with torch.no_grad():
        target = [s.detach() * 2 for s in student[:2]]
    dino_loss(student, target, center).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
