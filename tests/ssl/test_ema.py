"""EMA targets: the momentum schedules, the update rule, and frozen copies."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from equissl.ssl.ema import ema_momentum, ema_update, frozen_copy


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
