"""EMA targets: the momentum schedules, the update rule, and frozen copies."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from equissl.ssl.ema import (
    base_from_time_constant,
    ema_momentum,
    ema_update,
    frozen_copy,
    initial_weight_fraction,
)


def test_ema_momentum_cosine_schedule_values():
    assert ema_momentum(0, 100) == pytest.approx(0.996, abs=1e-12)
    assert ema_momentum(50, 100) == pytest.approx(0.998, abs=1e-12)
    assert ema_momentum(100, 100) == pytest.approx(1.0, abs=1e-12)
    assert ema_momentum(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-12)
    assert ema_momentum(10, 100, base=0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 10) + 1) / 2)
    values = [ema_momentum(k, 37) for k in range(38)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert ema_momentum(30, 100, base=0.99, schedule="constant") == 0.99
    with pytest.raises(ValueError):
        ema_momentum(0, 100, schedule="linear")
    with pytest.raises(ValueError):
        ema_momentum(0, 100, base=1.5)


def test_ema_update_moves_parameters_only_and_frozen_copy_gets_no_gradient():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.add_(5.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for new, old, w in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * w)
    assert torch.equal(target[1].running_mean, torch.zeros(4))  # buffers are the target's own
    target(torch.randn(6, 3)).sum()  # a forward of the target builds no graph to its parameters
    assert all(p.grad is None for p in target.parameters())


def test_per_epoch_schedule_holds_the_momentum_through_each_epoch():
    """The official seq-JEPA code: m_e = 1 - (1 - base) (cos(pi e / E) + 1) / 2 for every step of epoch e."""
    total, per_epoch = 100, 10  # E = 10 epochs
    for step in range(total):
        epoch = step // per_epoch
        expected = 1 - 0.004 * (math.cos(math.pi * epoch / 10) + 1) / 2
        assert ema_momentum(step, total, 0.996, "cosine_per_epoch", per_epoch) == pytest.approx(expected)
    # a fractional epoch length (accumulation across epochs) still steps once per epoch
    epoch_1 = 1 - 0.004 * (math.cos(math.pi * 7.5 / 100) + 1) / 2  # epoch 1 starts at step 7.5
    assert ema_momentum(14, 100, 0.996, "cosine_per_epoch", 7.5) == pytest.approx(epoch_1)
    assert ema_momentum(15, 100, 0.996, "cosine_per_epoch", 7.5) > epoch_1  # epoch 2
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ema_momentum(3, 100, 0.996, "cosine_per_epoch")


def test_time_constant_base_and_the_fraction_of_initial_weights_kept():
    assert base_from_time_constant(0.01, 1000) == pytest.approx(0.9)  # time constant 10 steps
    assert base_from_time_constant(0.0031, 100) == 0.0  # under one step: the target is the online net
    with pytest.raises(ValueError):
        base_from_time_constant(0.0, 100)
    # prod_k m_k against an explicit loop, and the figures the seq-JEPA docs quote
    momenta = [ema_momentum(k, 50, 0.99) for k in range(50)]
    assert initial_weight_fraction(50, 0.99) == pytest.approx(math.prod(momenta), rel=1e-12)
    assert initial_weight_fraction(505, 0.996) == pytest.approx(0.363, abs=0.001)
    assert initial_weight_fraction(1010, 0.996) == pytest.approx(0.132, abs=0.001)
    assert initial_weight_fraction(600, 0.996, "constant") == pytest.approx(0.996**600)
    official = initial_weight_fraction(81000, 0.996, "cosine_per_epoch", 81)
    assert math.log(official) == pytest.approx(-162.0, rel=0.01)  # e^-162: nothing of the init is left
    short = initial_weight_fraction(1010, base_from_time_constant(250 / 81000, 1010))
    assert short < 1e-60
