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


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.local_rows = dist.get_rank(), x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # all_reduce rather than reduce_scatter: gloo (CPU runs, the tests) lacks reduce_scatter.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_rows
        return grad[start : start + ctx.local_rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (n, ...) from every rank into (world_size * n, ...), rank order.

    Rows ``rank() * n .. rank() * n + n - 1`` of the result are this rank's ``x``. Every rank must
    pass the same shape (the sampler drops the ragged tail so that it does). Gradients flow back to
    every rank's ``x`` (summed over the ranks' losses, see the module docstring). The identity when
    not distributed.
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
