import math

import pytest
import torch
from torch import nn

from equissl.config import OptimConfig, build_config
from equissl.errors import ConfigError
from equissl.launch.optim import (
    LARS,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    scaled_lr,
    warmup_cosine,
)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_biases_and_norms_are_excluded_from_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    groups = parameter_groups(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_adapt"] is False
    assert len(groups[1]["params"]) == 4  # two biases, norm weight and bias


@pytest.mark.parametrize("rule, expected", [("none", 0.1), ("linear", 0.2), ("sqrt", 0.1 * math.sqrt(2))])
def test_lr_scaling_by_global_batch(rule, expected):
    assert scaled_lr(OptimConfig(lr=0.1, lr_scaling=rule, reference_batch=256), 512) == pytest.approx(
        expected
    )


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_lars_update_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    w.grad = torch.tensor([0.6, 0.8])  # norm 1
    LARS([w], lr=0.1, momentum=0.9, weight_decay=0.0, eta=0.02).step()
    trust = 0.02 * 5 / 1
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * trust * torch.tensor([0.6, 0.8]))


def test_lars_does_not_adapt_excluded_groups():
    b = nn.Parameter(torch.tensor([1.0]))
    b.grad = torch.tensor([2.0])
    LARS([{"params": [b], "lars_adapt": False, "weight_decay": 0.0}], lr=0.5).step()
    assert b.item() == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam", "lars"])
def test_every_optimizer_builds_and_steps(name):
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.1), 256)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


class _Objective(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
        self.predictor = nn.Linear(4, 4)


def _wrapped():
    """The trainer's layout: the objective under ``objective``, the online probe beside it."""
    model = nn.Module()
    model.objective, model.probe = _Objective(), nn.Linear(4, 2)
    return model


def test_lr_scales_multiply_the_named_modules_learning_rate_through_the_schedule():
    model = _wrapped()
    cfg = OptimConfig(name="sgd", lr=0.1, warmup_steps=0, lr_scales={"predictor": 10.0, "backbone.1": 0.5})
    optimizer = build_optimizer(model, cfg, 256)
    scheduler = build_scheduler(optimizer, cfg, 4)
    for _ in range(2):  # half-way through the cosine: every lr at half its start
        optimizer.step()
        scheduler.step()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    o = model.objective
    assert lr_of[id(o.predictor.weight)] == pytest.approx(0.5) == lr_of[id(o.predictor.bias)]
    assert lr_of[id(o.backbone[1].weight)] == pytest.approx(0.025)  # the longer key wins over none
    assert lr_of[id(o.backbone[0].weight)] == pytest.approx(0.05) == lr_of[id(model.probe.weight)]


def test_lr_scales_key_that_names_no_parameter_is_refused_with_the_modules():
    with pytest.raises(
        ConfigError, match=r"'predictr' names no trainable parameter.*backbone, predictor, probe"
    ):
        parameter_groups(_wrapped(), OptimConfig(lr_scales={"predictr": 10.0}))
    with pytest.raises(ConfigError, match="expected a value"):
        build_config("byol_resnet18_shapes3d", ["optim.lr_scales={predictor: 0}"])


def test_lr_scales_key_matches_whole_module_names_only():
    model = _wrapped()
    model.objective.predictor_bn = nn.BatchNorm1d(4)
    groups = parameter_groups(model, OptimConfig(lr_scales={"predictor": 2.0}, exclude_bias_and_norm=False))
    scaled = {id(p) for g in groups if g.get("lr_scale") == 2.0 for p in g["params"]}
    assert scaled == {id(p) for p in model.objective.predictor.parameters()}
