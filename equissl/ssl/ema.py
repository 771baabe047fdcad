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

MomentumSchedule = Literal["cosine", "cosine_per_epoch", "constant"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters get no gradient (the optimizer skips them)."""
    target = copy.deepcopy(module)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    return target


def ema_momentum(
    step: int,
    total_steps: int,
    base: float = 0.996,
    schedule: MomentumSchedule = "cosine",
    steps_per_epoch: float = 0.0,
    time_constant: float = 0.0,
) -> float:
    """EMA momentum for the update after optimizer step ``step`` (0-based) of ``total_steps``; with
    ``time_constant > 0`` (``objective.ema_time_constant``) the base comes from the run's length instead of
    ``base`` (:func:`run_base`).

    ``"cosine"`` (BYOL, Grill et al. 2020): ``1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2``:
    ``base`` at step 0, ``(1 + base) / 2`` half-way, 1 at ``total_steps``. ``"cosine_per_epoch"``: the same
    formula evaluated at the first step of the epoch, so ``m`` changes once per epoch of
    ``steps_per_epoch`` optimizer steps (``1 - (1 - base) (cos(pi e / E) + 1) / 2`` in epoch e of
    E = total_steps / steps_per_epoch; seq-JEPA's official code). ``"constant"``: ``base``.
    """
    base = run_base(base, time_constant, total_steps)
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"EMA base momentum must be in [0, 1], got {base}")
    if schedule == "constant":
        return base
    if schedule not in ("cosine", "cosine_per_epoch"):
        raise ValueError(
            f"unknown EMA schedule {schedule!r}; expected 'cosine', 'cosine_per_epoch' or 'constant'"
        )
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if schedule == "cosine_per_epoch":
        if steps_per_epoch <= 0:
            raise ValueError(
                "the per-epoch EMA schedule needs the epoch's length in steps (steps_per_epoch > 0)"
            )
        step = math.floor(step / steps_per_epoch + 1e-9) * steps_per_epoch
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def base_from_time_constant(fraction: float, total_steps: int) -> float:
    """The base momentum whose EMA time constant, ``1 / (1 - m)`` steps, is ``fraction`` of the run:
    ``1 - 1 / (fraction * total_steps)`` (0 when that time constant is below one step).

    The official seq-JEPA 3DIEBench run (momentum 0.996 over 81,000 steps) has a time constant of 250
    steps, 0.0031 of its length; the same fraction keeps a short run's target as close to its online
    network, relative to the run, as the official one's.
    """
    if fraction <= 0 or total_steps < 1:
        raise ValueError(f"need fraction > 0 and total_steps >= 1, got {fraction} and {total_steps}")
    return max(0.0, 1.0 - 1.0 / (fraction * total_steps))


def run_base(base: float, time_constant: float, total_steps: int) -> float:
    """The base momentum a run uses: ``base``, or with ``time_constant > 0`` the base whose time constant is
    that fraction of the run's ``total_steps`` (:func:`base_from_time_constant`). Every momentum-target
    objective offers it as ``objective.ema_time_constant``: a paper's base momentum was set for a run of
    tens of thousands of steps, and over a few hundred steps its cosine schedule leaves the target with a
    large share of its random initial weights (:func:`initial_weight_fraction`)."""
    if time_constant < 0 or not math.isfinite(time_constant):
        raise ValueError(f"objective.ema_time_constant must be >= 0 (0: off), got {time_constant}")
    return base_from_time_constant(time_constant, total_steps) if time_constant > 0 else base


def initial_weight_fraction(
    total_steps: int, base: float, schedule: MomentumSchedule = "cosine", steps_per_epoch: float = 0.0
) -> float:
    """How much of its initial (random) weights a target keeps after ``total_steps`` updates:
    ``prod_k m_k`` (each update keeps the fraction ``m_k`` of the target, :func:`ema_momentum`)."""
    log_kept = 0.0
    for step in range(total_steps):
        momentum = ema_momentum(step, total_steps, base, schedule, steps_per_epoch)
        if momentum <= 0.0:
            return 0.0
        log_kept += math.log(momentum)
    return math.exp(log_kept)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``w_target <- momentum * w_target + (1 - momentum) * w_online`` for every parameter (not buffers:
    a target's BatchNorm statistics come from its own forward passes, as in BYOL's code)."""
    for target_param, online_param in zip(target.parameters(), online.parameters(), strict=True):
        target_param.mul_(momentum).add_(online_param.detach(), alpha=1.0 - momentum)
