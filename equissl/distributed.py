"""Collectives that losses need: rank / world size, and an all-gather that back-propagates.

A leaf module (it imports only torch), so that losses and objectives in ``equissl.ssl`` can use it
without knowing the trainer.

Losses whose statistics span the batch (contrastive negatives, VICReg's variance and covariance)
must see the *global* batch when training runs on several processes, and their gradients must
reach every process's own samples. :func:`gather_with_grad` does that; everything here is the
identity / (0, 1) when no process group is initialised, so single-process code needs no branches.

Gradient convention (the same as lightly's ``GatherLayer``, VICReg's ``FullGatherLayer`` and
solo-learn's ``GatherLayer``, which has all-reduced its gradients since March 2022, commit ``f25dc1f``;
earlier versions kept only the local gradient, dropping the contributions of the other ranks' losses). Rank ``r`` computes a loss
``L_r`` on its local anchors against the gathered batch; DDP then *averages* parameter gradients.
The backward of the gather therefore *sums* the incoming gradients over ranks and returns this
rank's slice: ``dx_r = sum_q dL_q/dx_r``. After DDP's average, the parameter gradient is that of
``mean_q L_q``, which for our losses equals the single-process loss at the global batch. (Hence
the input gradient on a rank is ``world_size`` times the single-process input gradient before
DDP's division; tests/launch/test_distributed.py checks both.)
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# Backends whose reduce-scatter is native; elsewhere (gloo) the backward all-reduces the whole gradient and
# keeps its slice. NCCL's reduce-scatter sends each rank 1/world_size of what that all-reduce does, as
# torch.distributed.nn.functional.all_gather's backward does (not used itself: deprecated in torch 2.14).
_REDUCE_SCATTER_BACKENDS = ("nccl", "xccl")
_forced_backward: str | None = None  # see force_gather_backward


@contextlib.contextmanager
def force_gather_backward(collective: str):
    """Within the block, :func:`gather_with_grad`'s backward uses ``collective`` ("all_reduce" or
    "reduce_scatter") whatever the backend: tests run both paths in one gloo group."""
    global _forced_backward
    if collective not in ("all_reduce", "reduce_scatter"):
        raise ValueError(f"collective must be 'all_reduce' or 'reduce_scatter', got {collective!r}")
    previous, _forced_backward = _forced_backward, collective
    try:
        yield
    finally:
        _forced_backward = previous


def _backward_collective() -> str:
    if _forced_backward is not None:
        return _forced_backward
    return "reduce_scatter" if dist.get_backend() in _REDUCE_SCATTER_BACKENDS else "all_reduce"


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.local_rows = dist.get_rank(), x.shape[0]
        ctx.collective = _backward_collective()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if ctx.collective == "reduce_scatter":
            local = grad.new_empty((ctx.local_rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(local, grad, op=dist.ReduceOp.SUM)
            return local
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_rows
        return grad[start : start + ctx.local_rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (n, ...) from every rank into (world_size * n, ...), rank order.

    Rows ``rank() * n .. rank() * n + n - 1`` of the result are this rank's ``x``. Every rank must
    pass the same shape (the sampler drops the ragged tail so that it does). Gradients flow back to
    every rank's ``x`` (summed over the ranks' losses, see the module docstring), by a reduce-scatter
    on NCCL / XCCL and an all-reduce elsewhere. The identity when not distributed.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over ranks (a new tensor, no gradient); ``x`` itself when not distributed.

    Every rank must pass the same shape. For statistics without gradient (DINO's centre).
    """
    if not is_distributed():
        return x
    total = x.detach().clone().contiguous()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
