"""E-SSL on every base: the section typed by its base, the rotation crop added after the base's own
small crops, ``loss = base loss + lambda * rotation loss`` against the base objective itself, the
published default weights, and CARE on MoCo v3."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from equissl.config import build_config
from equissl.registry import OBJECTIVES
from equissl.ssl.essl import BASES, DEFAULT_ROTATION_WEIGHTS, ESSL, essl_config_class
from tests.helpers import TinyBackbone
from tests.ssl.test_objectives import BATCH, make_views, shrink, small_config


def _backbone():
    torch.manual_seed(0)
    return TinyBackbone(8)


@pytest.mark.parametrize("base", BASES)
def test_essl_on_every_base_is_the_base_loss_plus_the_weighted_rotation_term(base):
    cfg = shrink(essl_config_class(base)(rotation_weight=0.7))
    assert cfg.base == base and cfg.name == "essl"
    essl = OBJECTIVES.build("essl", cfg, _backbone()).train()
    base_spec = OBJECTIVES.build(base, shrink(OBJECTIVES.get(base).config_cls()), _backbone()).required_views
    assert essl.required_views.num_small == base_spec.num_small + 1  # the rotation crop comes last
    assert essl.required_views.num_views == base_spec.num_views
    views = make_views(essl.required_views)
    # the base objective with the same weights, on the views without the rotation crop
    reference = OBJECTIVES.build(
        base,
        dataclasses.replace(
            shrink(OBJECTIVES.get(base).config_cls()),
            **{
                f.name: getattr(cfg, f.name)
                for f in dataclasses.fields(OBJECTIVES.get(base).config_cls())
                if f.name != "name"
            },
        ),
        _backbone(),
    ).train()
    reference.load_state_dict(
        {k: v for k, v in essl.state_dict().items() if not k.startswith("rotation_head.")}
    )
    base_views = dataclasses.replace(views, small=views.small[:-1], small_params=views.small_params[:-1])
    expected_base = reference(base_views).loss
    out = essl(views)
    torch.testing.assert_close(
        out.loss, expected_base + 0.7 * out.metrics["loss/rotation"], rtol=1e-5, atol=1e-5
    )
    assert 0 <= float(out.metrics["rotation_acc"]) <= 1
    out.loss.backward()
    assert (
        essl.rotation_head.net[0].weight.grad.abs().sum() > 0 if hasattr(essl.rotation_head, "net") else True
    )
    assert essl.evaluation_metrics(views.images[0])["rotation_acc"].shape == (BATCH,)


def test_default_weights_and_the_simclr_base_is_unchanged():
    assert DEFAULT_ROTATION_WEIGHTS["simclr"] == 0.4 and DEFAULT_ROTATION_WEIGHTS["simsiam"] == 0.08
    assert DEFAULT_ROTATION_WEIGHTS["barlowtwins"] == 8.0
    assert {base: essl_config_class(base)().rotation_weight for base in BASES} == DEFAULT_ROTATION_WEIGHTS
    cfg = build_config("essl_resnet18_shapes3d")
    assert type(cfg.objective).__name__ == "ESSLConfig" and cfg.objective.base == "simclr"
    assert isinstance(OBJECTIVES.build("essl", small_config("essl"), _backbone()), ESSL)


def test_the_section_takes_its_bases_keys_and_refuses_others():
    cfg = build_config("byol_resnet18_shapes3d", ["objective.name=essl", "objective.base=byol"])
    assert cfg.objective.ema_base == 0.99 and cfg.objective.rotation_weight == pytest.approx(0.32)
    from equissl.errors import ConfigError

    with pytest.raises(ConfigError, match="objective.temperature"):
        build_config(None, ["objective.name=essl", "objective.base=byol", "objective.temperature=0.1"])
    with pytest.raises(ConfigError, match="objective.base"):
        build_config(None, ["objective.name=essl", "objective.base=moco"])


def test_care_on_mocov3_adds_the_equivariance_term_to_the_momentum_infonce():
    from equissl.ssl.care import CARE, CAREConfig, orthogonal_equivariance_loss
    from equissl.ssl.losses import momentum_infonce

    torch.manual_seed(0)
    cfg = CAREConfig(base="mocov3", proj_hidden_dims=(16,), proj_out_dim=8, pred_hidden_dim=16, num_chunks=2)
    care = CARE(TinyBackbone(8), cfg).train()
    views = make_views(care.required_views)
    out = care(views)
    x_a, x_b = views.images[:2]
    z_a, z_b = (care.projector(care.backbone(x)) for x in (x_a, x_b))
    with torch.no_grad():
        k_a, k_b = (care.target_projector(care.target_backbone(x)) for x in (x_a, x_b))
    expected = (
        momentum_infonce(care.predictor(z_a), k_b, 0.5)
        + momentum_infonce(care.predictor(z_b), k_a, 0.5)
        + 0.01 * orthogonal_equivariance_loss(z_a, z_b, 2)
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is None for n, p in care.named_parameters() if n.startswith("target_"))
    before = [p.clone() for p in care.target_projector.parameters()]
    with torch.no_grad():
        for p in care.projector.parameters():
            p.add_(1.0)
    care.on_step_end(1, 10)  # first update: exactly the base momentum 0.99
    for old, new, online in zip(before, care.target_projector.parameters(), care.projector.parameters()):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * online)
