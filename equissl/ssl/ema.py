"""Momentum ("EMA") targets: a frozen copy of a network that follows the online one by an exponential
moving average of its parameters, and the momentum schedules of BYOL and its successors.

Functions rather than a wrapper module, so that a method's target keeps plain attribute names in its
state dict (``target_backbone.*``), which checkpoints and exports read.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn

MomentumSchedule = Literal["cosine", "constant"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters get no gradient (the optimizer skips them)."""
    target = copy.deepcopy(module)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    return target


def ema_momentum(
    step: int, total_steps: int, base: float = 0.996, schedule: MomentumSchedule = "cosine"
) -> float:
    """EMA momentum for the update after optimizer step ``step`` (0-based) of ``total_steps``.

    ``"cosine"`` (BYOL, Grill et al. 2020): ``1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2``:
    ``base`` at step 0, ``(1 + base) / 2`` half-way, 1 at ``total_steps``. ``"constant"``: ``base``.
    """
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"EMA base momentum must be in [0, 1], got {base}")
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown EMA schedule {schedule!r}; expected 'cosine' or 'constant'")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``w_target <- momentum * w_target + (1 - momentum) * w_online`` for every parameter (not buffers:
    a target's BatchNorm statistics come from its own forward passes, as in BYOL's code)."""
    for target_param, online_param in zip(target.parameters(), online.parameters(), strict=True):
        target_param.mul_(momentum).add_(online_param.detach(), alpha=1.0 - momentum)
