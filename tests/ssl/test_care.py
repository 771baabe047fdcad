"""CARE: the orthogonal-equivariance loss against independent reference computations (the paper's
pairwise expectation and the official code's chunk loop), zero when the second view is an orthogonal map
of the first within every chunk and not otherwise; the objective on batch-shared views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from equissl.augmentations.image import chunk_index
from equissl.config import AugmentConfig
from equissl.registry import OBJECTIVES
from equissl.ssl.care import CARE, CAREConfig, orthogonal_equivariance_loss
from equissl.ssl.losses import nt_xent
from equissl.types import ViewSpec
from tests.helpers import TinyBackbone, make_views


def pairwise_reference(z_a, z_b, chunks):
    """The paper's estimate, by explicit loops: per chunk, mean over ordered pairs i != j of
    (<z_i, z_j> - <z'_i, z'_j>)^2 on unit vectors; mean over chunks."""
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    losses = []
    for rows in chunks:
        terms = [(z_a[i] @ z_a[j] - z_b[i] @ z_b[j]) ** 2 for i in rows for j in rows if i != j]
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses).mean()


def official_reference(z_a, z_b, num_chunks):
    """Sharut/CARE ``equivariance_loss``: equal chunks of B // num_chunks rows, off-diagonal Gram entries by
    a boolean mask, ``2 * ||t1 - t2||_F^2`` per row, mean over rows, mean over chunks."""
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    size = z_a.shape[0] // num_chunks
    loss = 0.0
    for k in range(num_chunks):
        a, b = z_a[k * size : (k + 1) * size], z_b[k * size : (k + 1) * size]
        mask = ~torch.eye(size, dtype=torch.bool)
        t1, t2 = (a @ a.T).masked_select(mask).view(size, -1), (b @ b.T).masked_select(mask).view(size, -1)
        loss = loss + 2 * torch.norm(t1 - t2, p="fro", dim=-1).pow(2).mean()
    return loss / num_chunks


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_pair_mean_matches_the_pairwise_expectation_with_uneven_chunks():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = (
        torch.randn(11, 5, generator=g, dtype=torch.float64),
        torch.randn(11, 5, generator=g, dtype=torch.float64),
    )
    index = chunk_index(11, 3)  # sizes 4, 4, 3: the augmentation API's partition
    chunks = [(index == k).nonzero().squeeze(1).tolist() for k in range(3)]
    assert sorted(len(c) for c in chunks) == [3, 4, 4]
    assert torch.allclose(orthogonal_equivariance_loss(z_a, z_b, 3), pairwise_reference(z_a, z_b, chunks))


def test_official_scale_matches_official_loop():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = (
        torch.randn(32, 6, generator=g, dtype=torch.float64),
        torch.randn(32, 6, generator=g, dtype=torch.float64),
    )
    official = orthogonal_equivariance_loss(z_a, z_b, 4, scale="official")
    assert torch.allclose(official, official_reference(z_a, z_b, 4))
    # chunks of n = 8: the official value is 2 (n - 1) times the pair mean
    assert torch.allclose(official, 14 * orthogonal_equivariance_loss(z_a, z_b, 4))


def test_zero_when_each_chunk_of_the_second_view_is_an_orthogonal_map_of_the_first():
    g = torch.Generator().manual_seed(2)
    z_a = torch.randn(24, 6, generator=g, dtype=torch.float64)
    index = chunk_index(24, 3)
    maps = [random_orthogonal(6, g) for _ in range(3)]
    z_b = torch.stack([z_a[i] @ maps[int(index[i])] for i in range(24)])
    z_b = z_b * (0.5 + torch.rand(24, 1, generator=g, dtype=torch.float64))  # norms do not matter
    assert orthogonal_equivariance_loss(z_a, z_b, 3) < 1e-20
    assert orthogonal_equivariance_loss(z_a, z_b, 3, scale="official") < 1e-20
    # ... but not when the chunks are counted differently (one chunk mixes two maps)
    assert orthogonal_equivariance_loss(z_a, z_b, 1) > 1e-3
    # ... nor for a non-orthogonal linear map
    stretched = z_a @ torch.diag(torch.tensor([3.0, 1, 1, 1, 1, 0.2], dtype=torch.float64))
    assert orthogonal_equivariance_loss(z_a, stretched, 3) > 1e-3


def test_properties_and_errors():
    g = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    loss = orthogonal_equivariance_loss(z_a, z_b, 2)
    assert torch.allclose(loss, orthogonal_equivariance_loss(z_b, z_a, 2))  # symmetric
    within = torch.cat([torch.randperm(8, generator=g), 8 + torch.randperm(8, generator=g)])
    assert torch.allclose(loss, orthogonal_equivariance_loss(z_a[within], z_b[within], 2), atol=1e-6)
    with pytest.raises(ValueError, match="fewer than 2"):
        orthogonal_equivariance_loss(z_a, z_b, 9)
    with pytest.raises(ValueError, match="equal shape"):
        orthogonal_equivariance_loss(z_a, z_b[:, :3], 2)
    with pytest.raises(ValueError, match="scale"):
        orthogonal_equivariance_loss(z_a, z_b, 2, scale="sum")


def test_objective_on_batch_shared_views():
    assert OBJECTIVES.get("care").config_cls is CAREConfig
    cfg = CAREConfig(proj_hidden_dims=(16,), proj_out_dim=8, num_chunks=4)
    assert (CAREConfig().equivariance_weight, CAREConfig().num_chunks, CAREConfig().temperature) == (
        0.01,
        8,
        0.5,
    )
    assert CARE.required_views == ViewSpec(source="image", num_views=2, shared_chunks=8)
    torch.manual_seed(0)
    care = CARE(TinyBackbone(24), cfg)
    assert care.required_views.shared_chunks == 4
    g = torch.Generator().manual_seed(4)
    batch = {"image": torch.randint(0, 256, (16, 3, 20, 20), generator=g, dtype=torch.uint8)}
    cfg = AugmentConfig(crop_size=12)
    views = make_views(cfg, care.required_views, batch, torch.Generator().manual_seed(5))
    out = care(views)
    with torch.no_grad():
        z_a, z_b = (
            care.projector(care.backbone(views.images[0])),
            care.projector(care.backbone(views.images[1])),
        )
    expected = nt_xent(z_a, z_b, 0.5) + 0.01 * orthogonal_equivariance_loss(z_a, z_b, 4)
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    assert set(out.metrics) == {"loss/nt_xent", "loss/equi"}
    out.loss.backward()
    assert all(p.grad is not None for p in care.parameters())

    per_sample = make_views(
        cfg, ViewSpec(source="image", num_views=2), batch, torch.Generator().manual_seed(5)
    )
    with pytest.raises(ValueError, match="shared"):
        care(per_sample)


def test_chunk_pairs_shared_draws_one_pair_for_the_batch_and_keeps_the_chunked_loss():
    """chunk_pairs=shared (the official vmap(..., randomness="same")): every chunk gets the same
    augmentation pair, the loss still compares Gram entries within each of the num_chunks chunks;
    per_chunk views (different pairs per chunk) are refused by a shared-pair objective."""
    torch.manual_seed(0)
    shared = CARE(
        TinyBackbone(24),
        CAREConfig(proj_hidden_dims=(16,), proj_out_dim=8, num_chunks=4, chunk_pairs="shared"),
    )
    assert shared.required_views == ViewSpec(source="image", num_views=2, shared_chunks=1)
    g = torch.Generator().manual_seed(6)
    batch = {"image": torch.randint(0, 256, (16, 3, 20, 20), generator=g, dtype=torch.uint8)}
    cfg = AugmentConfig(crop_size=12)
    views = make_views(cfg, shared.required_views, batch, torch.Generator().manual_seed(7))
    for params in views.params:
        for value in params.values():
            assert bool((value == value[:1]).all())  # one draw for all 16 images
    out = shared(views)
    with torch.no_grad():
        z_a, z_b = (shared.projector(shared.backbone(x)) for x in views.images)
    expected = nt_xent(z_a, z_b, 0.5) + 0.01 * orthogonal_equivariance_loss(z_a, z_b, 4)
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    per_chunk = make_views(cfg, ViewSpec(source="image", num_views=2, shared_chunks=4), batch, g)
    with pytest.raises(ValueError, match="chunk_pairs=shared"):
        shared(per_chunk)
    assert CAREConfig().chunk_pairs == "per_chunk"
    with pytest.raises(ValueError, match="chunk_pairs"):
        CARE(TinyBackbone(24), CAREConfig(chunk_pairs="all"))
