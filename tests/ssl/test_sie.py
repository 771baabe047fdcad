"""SIE: the hypernetwork predictor and the loss against independent
reference computations (the official code's formulas), the equivariance term zero by construction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equissl.heads.hypernet import HyperNetPredictor
from equissl.latents import relative_action
from equissl.registry import OBJECTIVES
from equissl.ssl.sie import SIE, SIEConfig, sie_loss
from equissl.types import Views
from tests.helpers import TinyBackbone


def random_latents(n: int, generator: torch.Generator) -> torch.Tensor:
    euler = (torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    rest = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    return torch.cat([euler, rest], dim=1)


def small_sie(**changes) -> SIE:
    torch.manual_seed(0)
    cfg = SIEConfig(equi_dim=8, inv_proj_dims=(12, 10), equi_proj_dims=(12, 6), **changes)
    return SIE(TinyBackbone(24), cfg)


def object_views(batch: int = 8, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    latents = random_latents(2 * batch, g).float()
    images = [torch.randn(batch, 3, 12, 12, generator=g) for _ in range(2)]
    return Views(images=images, params=[{}, {}], latents=[latents[:batch], latents[batch:]])


# ----------------------------------------------------------------------------------------------------
# Hypernetwork predictor


def reference_predictor(predictor: HyperNetPredictor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """facebookresearch/SIE ParametrizedNet.forward, rewritten: flat weights from the hypernetwork, viewed
    (-1, out, in) layer by layer, ``bmm(out, W^T)`` then the bias slice at the end of each layer's block."""
    flat = predictor.hypernet(action)
    dims = predictor.dims
    out, offset = z.unsqueeze(1), 0
    for i in range(len(dims) - 1):
        weight = flat[:, offset : offset + dims[i] * dims[i + 1]].view(-1, dims[i + 1], dims[i])
        out = torch.bmm(out, weight.transpose(-2, -1))
        offset += dims[i] * dims[i + 1]
        if predictor.predictor_bias:
            out = out + flat[:, offset : offset + dims[i + 1]].unsqueeze(1)
            offset += dims[i + 1]
        if i < len(dims) - 2 and predictor.predictor_relu:
            out = F.relu(out)
    assert offset == flat.shape[1]
    return out.squeeze(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"hypernetwork_bias": True},
        {"predictor_bias": True, "hypernetwork_bias": True},
        {"hidden_dims": (5,), "predictor_relu": True, "predictor_bias": True},
        {"hypernetwork": "deep", "hidden_dims": (7,), "predictor_bias": True, "predictor_relu": True},
    ],
)
def test_predictor_matches_official_parametrisation(kwargs):
    torch.manual_seed(0)
    predictor = HyperNetPredictor(6, 4, **kwargs).double()
    z, action = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    assert torch.allclose(predictor(z, action), reference_predictor(predictor, z, action), atol=1e-10)


def test_linear_predictor_is_linear_in_the_action_and_in_the_input():
    torch.manual_seed(0)
    predictor = HyperNetPredictor(5, 4).double()
    z = torch.randn(3, 5, dtype=torch.float64)
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(predictor(z, a + 2 * b), predictor(z, a) + 2 * predictor(z, b), atol=1e-10)
    assert torch.allclose(predictor(3 * z, a), 3 * predictor(z, a), atol=1e-10)
    weight, bias = predictor.layer_weights(a)[0]
    assert bias is None and weight.shape == (3, 5, 5)
    assert torch.allclose(predictor(z, a), torch.einsum("boi,bi->bo", weight, z), atol=1e-10)


@pytest.mark.parametrize("dim", [64, 512])
def test_unit_gain_init_keeps_the_embedding_scale_and_torch_init_does_not(dim):
    g = torch.Generator().manual_seed(dim)
    z = torch.randn(256, dim, generator=g)
    q = F.normalize(torch.randn(256, 4, generator=g), dim=1)  # random relative rotations, |q| = 1

    def gain(init: str) -> float:
        torch.manual_seed(1)
        predictor = HyperNetPredictor(dim, 4, init=init)
        with torch.no_grad():
            return float(predictor(z, q).norm(dim=1).mean() / z.norm(dim=1).mean())

    assert gain("unit_gain") == pytest.approx(1.0, abs=0.1)
    # torch's U(-1/2, 1/2) generator (std 12^-1/2) scales by about sqrt(dim / 12)
    assert gain("torch") == pytest.approx(math.sqrt(dim / 12), rel=0.15)
    with pytest.raises(ValueError, match="unit_gain"):
        HyperNetPredictor(dim, 4, hypernetwork="deep", init="unit_gain")
    with pytest.raises(ValueError, match="init"):
        HyperNetPredictor(dim, 4, init="xavier")
    assert SIEConfig().predictor_init == "torch"  # the official initialisation stays the default


def test_predictor_rejects_bad_shapes():
    predictor = HyperNetPredictor(5, 4)
    with pytest.raises(ValueError, match="action"):
        predictor(torch.randn(3, 5), torch.randn(3, 6))
    with pytest.raises(ValueError, match="z"):
        predictor(torch.randn(3, 4), torch.randn(3, 4))


# ----------------------------------------------------------------------------------------------------
# Loss


def reference_sie_loss(inv_a, inv_b, equi_a, equi_b, pred, sim, equi_factor, std, cov, halve):
    """The official ``SIE.forward`` loss, written out: centred embeddings, sqrt(var + 1e-4), relu(1 - std),
    the branches halved when ``halve`` (official) or summed (paper), covariance / D."""

    def std_term(x):
        x = x - x.mean(dim=0)
        return torch.mean(F.relu(1 - torch.sqrt(x.var(dim=0) + 0.0001)))

    def cov_term(x):
        x = x - x.mean(dim=0)
        c = (x.T @ x) / (x.shape[0] - 1)
        return (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()) / c.shape[0]

    x, y = torch.cat([inv_a, equi_a], 1), torch.cat([inv_b, equi_b], 1)
    factor = 0.5 if halve else 1.0
    std_loss = factor * (std_term(x) + std_term(y))
    pred_std_loss = factor * std_term(pred)
    return (
        sim * ((inv_a - inv_b) ** 2).mean()
        + equi_factor * sim * ((pred - equi_b) ** 2).mean()
        + std * std_loss
        + std * pred_std_loss
        + cov * (cov_term(x) + cov_term(y))
    )


@pytest.mark.parametrize("halve", [False, True])
def test_sie_loss_matches_reference(halve):
    g = torch.Generator().manual_seed(3)
    inv_a, inv_b = (
        torch.randn(16, 5, generator=g, dtype=torch.float64),
        torch.randn(16, 5, generator=g, dtype=torch.float64),
    )
    equi_a, equi_b, pred = (0.3 * torch.randn(16, 4, generator=g, dtype=torch.float64) for _ in range(3))
    total, terms = sie_loss(
        inv_a,
        inv_b,
        equi_a,
        equi_b,
        pred,
        sim_coeff=10.0,
        equi_coeff=10.0 * 0.45,
        std_coeff=10.0,
        cov_coeff=1.0,
        average_branches=halve,
    )
    expected = reference_sie_loss(inv_a, inv_b, equi_a, equi_b, pred, 10.0, 0.45, 10.0, 1.0, halve)
    assert torch.allclose(total, expected, rtol=1e-12, atol=1e-12)
    assert set(terms) == {"inv", "equi", "var", "pred_var", "cov"}
    assert terms["pred_var"] > 0  # std 0.3 < 1: the hinge is active

    no_pred = sie_loss(inv_a, inv_b, equi_a, equi_b, pred, equi_coeff=4.5, predictor_variance=False)[1]
    assert no_pred["pred_var"] == 0 and torch.allclose(no_pred["var"], terms["var"] / (0.5 if halve else 1.0))


def test_equivariance_term_is_zero_when_targets_come_from_the_predictor_and_not_otherwise():
    torch.manual_seed(0)
    predictor = HyperNetPredictor(6, 4).double()
    g = torch.Generator().manual_seed(4)
    l1, l2, l3 = (random_latents(12, g) for _ in range(3))
    equi_a = torch.randn(12, 6, generator=g, dtype=torch.float64)
    inv = torch.randn(12, 3, generator=g, dtype=torch.float64)
    action = relative_action(l1, l2).double()
    equi_b = predictor(equi_a, action)  # the second view's embedding, exactly as predicted
    _, terms = sie_loss(inv, inv, equi_a, equi_b, predictor(equi_a, action))
    assert terms["equi"] == 0 and terms["inv"] == 0
    wrong = predictor(equi_a, relative_action(l1, l3).double())  # predicted with another rotation
    _, terms = sie_loss(inv, inv, equi_a, equi_b, wrong)
    assert terms["equi"] > 1e-3


def test_sie_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        sie_loss(
            torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 3)
        )


# ----------------------------------------------------------------------------------------------------
# Objective


def test_paper_defaults_and_registration():
    cfg = SIEConfig()
    assert OBJECTIVES.get("sie").config_cls is SIEConfig
    assert (cfg.equi_dim, cfg.inv_proj_dims, cfg.equi_proj_dims) == (256, (1024,) * 3, (1024,) * 3)
    assert (cfg.sim_coeff, cfg.equi_factor, cfg.std_coeff, cfg.cov_coeff) == (10.0, 0.45, 10.0, 1.0)
    assert cfg.hypernetwork == "linear" and not cfg.predictor_bias and not cfg.hypernetwork_bias
    assert SIE.required_views.source == "object" and SIE.required_views.num_views == 2
    assert small_sie().equi_coeff == pytest.approx(4.5)
    assert small_sie(equi_factor=4.5, equi_factor_scales_sim=False).equi_coeff == pytest.approx(4.5)


def test_forward_terms_agree_with_the_evaluation_interface():
    sie = small_sie()
    views = object_views()
    sie.train()
    out = sie(views)
    assert torch.isfinite(out.loss) and out.features.shape == (8, 24) and not out.features.requires_grad
    out.loss.backward()
    assert all(p.grad is not None for p in sie.parameters())

    with torch.no_grad():  # the same BatchNorm (train) statistics: one view per call, as in forward
        rep_a, rep_b = sie.representations(views.images[0]), sie.representations(views.images[1])
        assert (
            rep_a["inv"].shape == (8, 16) and rep_a["equi"].shape == (8, 8) and rep_a["full"].shape == (8, 24)
        )
        assert torch.equal(torch.cat([rep_a["inv"], rep_a["equi"]], 1), rep_a["full"])
        action = sie.action_from_latents(views.latents[0], views.latents[1])
        pred = sie.predict_equivariant(rep_a["equi_embedding"], action)
        equi = F.mse_loss(pred, rep_b["equi_embedding"])
    assert torch.allclose(out.metrics["loss/equi"], equi, rtol=1e-5)


def test_colour_action_widens_the_hypernetwork_and_errors_are_user_errors():
    sie = small_sie(action="rotation_colour")
    assert sie.predictor.action_dim == 6
    assert torch.isfinite(sie(object_views()).loss)
    with pytest.raises(ValueError, match="equi_dim"):
        SIE(TinyBackbone(24), SIEConfig(equi_dim=24))
    views = object_views()
    with pytest.raises(ValueError, match="latents"):
        small_sie()(Views(images=views.images, params=views.params))
