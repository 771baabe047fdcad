"""Precision helpers of the losses: compute in float32 (float64 stays float64) whatever the autocast dtype.

Losses are cheap, and the log-sum-exp over negatives, VICReg's covariance and cosine similarities lose too
much in bfloat16 / float16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

_Loss = TypeVar("_Loss", bound=Callable)


def full_precision(loss: _Loss) -> _Loss:
    """Run ``loss`` with autocast off (on the device of its first tensor), so matmuls stay fp32."""

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        first = next(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))
        with torch.autocast(device_type=first.device.type, enabled=False):
            return loss(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def upcast(z: Tensor) -> Tensor:
    """float32 for half / bfloat16 inputs; float32 and float64 stay as they are."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def check_pair(z_a: Tensor, z_b: Tensor, name: str, min_rows: int = 1) -> None:
    """Raise ValueError unless ``z_a`` and ``z_b`` are (N, D) of one shape with N >= ``min_rows``."""
    if z_a.ndim != 2 or z_b.ndim != 2:
        raise ValueError(f"{name}: expected (N, D) embeddings, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if z_a.shape != z_b.shape:
        raise ValueError(f"{name}: z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} differ in shape")
    if z_a.shape[0] < min_rows:
        raise ValueError(f"{name}: needs a batch of at least {min_rows}, got {z_a.shape[0]}")
