"""BYOL, SimSiam, Barlow Twins, MoCo v3 and DINO as objectives: the losses they assemble against a
reference built from their own modules, the EMA target (moves only by the momentum update, no gradient),
the stop-gradients, SimSiam's constant predictor learning rate and DINO's frozen last layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equissl.config import OptimConfig
from equissl.launch.optim import build_optimizer, build_scheduler
from equissl.ssl.barlowtwins import BarlowTwins, BarlowTwinsConfig
from equissl.ssl.byol import BYOL, BYOLConfig
from equissl.ssl.care import CARE, CAREConfig
from equissl.ssl.dino import DINO, DINOConfig, teacher_temperature
from equissl.ssl.ema import ema_momentum
from equissl.ssl.mocov3 import MoCoV3, MoCoV3Config
from equissl.ssl.simsiam import SimSiam, SimSiamConfig, simsiam_loss
from equissl.types import Views
from tests.helpers import TinyBackbone


def _views(n_global: int = 2, n_small: int = 0, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(6, 3, 8, 8, generator=g) for _ in range(n_global)]
    small = [torch.randn(6, 3, 4, 4, generator=g) for _ in range(n_small)]
    return Views(images, [{}] * n_global, small, [{}] * n_small)


def _byol() -> BYOL:
    torch.manual_seed(0)
    return BYOL(TinyBackbone(8), BYOLConfig(proj_hidden_dim=16, proj_out_dim=8, pred_hidden_dim=16))


def _mocov3() -> MoCoV3:
    torch.manual_seed(0)
    return MoCoV3(TinyBackbone(8), MoCoV3Config(proj_hidden_dim=16, out_dim=8, pred_hidden_dim=16))


def _dino(**kw) -> DINO:
    torch.manual_seed(0)
    cfg = DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, local_crops=2, local_crop_size=4, **kw)
    return DINO(TinyBackbone(8), cfg)


def test_byol_loss_is_the_symmetrised_regression_on_the_target_projections():
    model = _byol().train()
    views = _views()
    out = model(views)
    x_a, x_b = views.images
    # reference: the same modules, the loss written as || p/|p| - z/|z| ||^2 summed over both directions
    p_a = F.normalize(model.predictor(model.projector(model.backbone(x_a))), dim=1)
    p_b = F.normalize(model.predictor(model.projector(model.backbone(x_b))), dim=1)
    with torch.no_grad():
        z_a = F.normalize(model.target_projector(model.target_backbone(x_a)), dim=1)
        z_b = F.normalize(model.target_projector(model.target_backbone(x_b)), dim=1)
    expected = ((p_a - z_b) ** 2).sum(1).mean() + ((p_b - z_a) ** 2).sum(1).mean()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("build", [_byol, _mocov3])
def test_ema_target_gets_no_gradient_and_moves_only_by_the_momentum_update(build):
    model = build().train()
    model(_views()).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert not p.requires_grad and p.grad is None, name
    online = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("target_")}
    target = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("target_")}
    with torch.no_grad():  # an optimizer step on the online network only
        for name, p in model.named_parameters():
            if not name.startswith("target_"):
                p.add_(torch.randn_like(p))
    moved_online = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("target_")}
    for name, value in target.items():  # the forward and the online step left the target alone
        torch.testing.assert_close(dict(model.named_parameters())[name], value)
    model.on_step_end(3, 10)
    tau = ema_momentum(2, 10, model.cfg.ema_base, model.cfg.ema_schedule)
    assert model.momentum.item() == pytest.approx(tau)
    params = dict(model.named_parameters())
    for name, value in target.items():
        source = name.replace("target_", "", 1)
        torch.testing.assert_close(params[name], tau * value + (1 - tau) * moved_online[source])
    assert all(torch.equal(params[n], v) for n, v in moved_online.items())
    assert online  # the comparison above is over real parameters


def _care_mocov3(**kw) -> CARE:
    torch.manual_seed(0)
    cfg = CAREConfig(base="mocov3", proj_hidden_dims=(16,), proj_out_dim=8, pred_hidden_dim=16, **kw)
    return CARE(TinyBackbone(8), cfg)


@pytest.mark.parametrize("build", [_byol, _mocov3, _dino, _care_mocov3])
@pytest.mark.parametrize(
    ("step", "tau"), [(1, 0.9), (501, 0.95), (1000, 1.0 - 0.1 * (1 - math.cos(math.pi / 1000)) / 2)]
)
def test_ema_time_constant_sets_the_base_from_the_run_length(build, step, tau):
    # time constant 0.01 of a 1000-step run = 10 steps: base 1 - 1/10 = 0.9 whatever ema_base says; the
    # cosine schedule then goes 0.9 at step 0, 0.95 half-way (step 500, 0-based), near 1 at the end
    model = build()
    model.cfg.ema_base, model.cfg.ema_time_constant = 0.999, 0.01
    target = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("target_")}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if not name.startswith("target_"):
                p.add_(1.0)  # online and target now differ everywhere
    model.on_step_end(step, 1000)
    for name, value in target.items():
        online = params[name.replace("target_", "", 1)].detach()
        torch.testing.assert_close(params[name].detach(), tau * value + (1 - tau) * online)
    assert target


def test_simsiam_loss_values_and_stop_gradient():
    z = torch.randn(5, 4, dtype=torch.float64)
    assert simsiam_loss(z, z, z, z).item() == pytest.approx(-1.0)
    assert simsiam_loss(-z, -z, z, z).item() == pytest.approx(1.0)
    p_a, p_b, z_a, z_b = (torch.randn(5, 4, dtype=torch.float64, requires_grad=True) for _ in range(4))
    expected = -(F.cosine_similarity(p_a, z_b).mean() + F.cosine_similarity(p_b, z_a).mean()) / 2
    loss = simsiam_loss(p_a, p_b, z_a, z_b)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert z_a.grad is None and z_b.grad is None and p_a.grad.abs().sum() > 0  # sg on the z side


def test_simsiam_predictor_keeps_the_base_learning_rate_while_the_rest_decays():
    model = SimSiam(TinyBackbone(8), SimSiamConfig(proj_hidden_dim=8, proj_out_dim=8, pred_hidden_dim=4))
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, warmup_steps=2), 256)
    scheduler = build_scheduler(optimizer, OptimConfig(name="sgd", lr=0.1, warmup_steps=2), 10)
    predictor = {id(p) for p in model.predictor.parameters()}
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    for group in optimizer.param_groups:
        fixed = all(id(p) in predictor for p in group["params"])
        assert group.get("constant_lr", False) == fixed
        assert group["lr"] == (
            pytest.approx(0.1)
            if fixed
            else pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 8)).item()))
        )
    unfixed = SimSiam(
        TinyBackbone(8), SimSiamConfig(proj_hidden_dim=8, proj_out_dim=8, fix_predictor_lr=False)
    )
    assert not any(g.get("constant_lr") for g in build_optimizer(unfixed, OptimConfig(), 256).param_groups)


def test_barlow_twins_objective_uses_the_projected_views():
    torch.manual_seed(0)
    model = BarlowTwins(TinyBackbone(8), BarlowTwinsConfig(projector_dims=(16, 6))).train()
    views = _views()
    out = model(views)
    from equissl.ssl.losses import barlow_twins_loss

    z_a, z_b = (model.projector(model.backbone(x)) for x in views.images)
    torch.testing.assert_close(out.loss, barlow_twins_loss(z_a, z_b, 5e-3)[0])


def test_mocov3_freezes_the_vit_patch_projection():
    from equissl.backbones.poly_vit import PolyViTConfig
    from equissl.registry import BACKBONES

    vit = BACKBONES.build("poly_vit_small", PolyViTConfig.tiny())
    model = MoCoV3(
        vit, MoCoV3Config(proj_hidden_dim=16, out_dim=8, pred_hidden_dim=16, freeze_patch_embed=True)
    )
    assert not any(p.requires_grad for p in model.backbone.patch_embed.parameters())
    assert any(p.requires_grad for p in model.backbone.blocks.parameters())
    with pytest.raises(Exception, match="ViT"):
        MoCoV3(TinyBackbone(8), MoCoV3Config(freeze_patch_embed=True))


def test_dino_teacher_temperature_warmup_by_epoch():
    cfg = DINOConfig()
    assert teacher_temperature(cfg, 0) == pytest.approx(0.04)
    assert teacher_temperature(cfg, 29) == pytest.approx(0.07)
    assert teacher_temperature(cfg, 15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert teacher_temperature(cfg, 100) == pytest.approx(0.07)


def test_dino_crops_centre_teacher_and_state():
    model = _dino().train()
    spec = model.required_views
    assert (spec.num_views, spec.num_small) == (2, 2) and spec.crops[0].scale == (0.4, 1.0)
    views = _views(2, 2)
    center_before = model.center.clone()
    out = model(views)
    with torch.no_grad():
        teacher = model.target_head(model.target_backbone(torch.cat(views.images)))
    expected_center = 0.9 * center_before + 0.1 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(model.center, expected_center)
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("target_"))
    state = model.state_dict()
    assert {"center", "steps_done", "momentum"} <= state.keys() and any(
        k.startswith("target_head.") for k in state
    )
    model.eval()
    before = model.center.clone()
    model(views)
    assert torch.equal(model.center, before)  # evaluation passes leave the centre alone


def test_dino_last_layer_is_frozen_during_the_first_epoch_only():
    model = _dino().train()
    model.set_steps_per_epoch(3)
    for step, frozen in [(0, True), (2, True), (3, False)]:
        model.zero_grad()
        model(_views(2, 2)).loss.backward()
        model.before_optimizer_step(step)
        last = list(model.head.last_layer.parameters())
        assert all(p.grad is None for p in last) == frozen, step
        assert model.head.mlp[0].weight.grad is not None
    assert not model.head.last_layer.weight_g.requires_grad  # norm_last_layer: the norm stays 1
    model.on_step_end(7, 100)
    assert model.epoch() == 2 and int(model.steps_done) == 7
