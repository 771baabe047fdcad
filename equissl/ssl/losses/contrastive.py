"""Contrastive losses: SimCLR's NT-Xent over the global batch.

Negatives are drawn from every rank when a process group is initialised (keys gathered with gradient,
:func:`equissl.distributed.gather_with_grad`); each rank returns its loss such that the mean over ranks and
the DDP-averaged gradient equal the single-process values at the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.distributed import gather_with_grad, rank
from equissl.ssl.losses.precision import check_pair, full_precision, upcast


@full_precision
def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.5, same_view_negatives: bool = True) -> Tensor:
    """SimCLR's NT-Xent (normalized temperature-scaled cross entropy), Chen et al. 2020, eq. (1).

    z_a, z_b: (N, D) projections of two views; row i of each is the positive pair of sample i.
    Returns a scalar: the mean over all 2N anchors (both directions) of
    ``-log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) )`` with ``s`` the cosine similarity, i.e.
    2N - 2 negatives per anchor (every other view in the batch, both views), as in the paper's
    Algorithm 1 (``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``).

    Distributed: anchors are this rank's 2N rows; keys are gathered from every rank with gradient,
    so each anchor has 2 * N_global - 2 negatives, and its positive sits at ``rank * N + i`` of the
    gathered other view (the official code's ``labels_idx = range(N) + replica_id * N``).

    same_view_negatives=False drops the same-view keys from the denominator (N_global - 1
    negatives, all from the other view): the ``infoNCE(z1, z2) / 2 + infoNCE(z2, z1) / 2`` of the
    official E-SSL code (rdangovs/essl), which departs from SimCLR's loss.

    Scale: google-research/simclr returns ``loss_a + loss_b`` (the *sum* of the two directional
    means, twice the paper's value); we follow the paper (and E-SSL's, lightly's code): the mean.
    """
    check_pair(z_a, z_b, "nt_xent")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    z_a = F.normalize(upcast(z_a), dim=1)
    z_b = F.normalize(upcast(z_b), dim=1)
    keys_a, keys_b = gather_with_grad(z_a), gather_with_grad(z_b)  # (M, D), M = N * world size
    n = z_a.shape[0]
    positive = torch.arange(n, device=z_a.device) + rank() * n  # rows of this rank in the gathered keys

    def directional(anchors: Tensor, other_view: Tensor, same_view: Tensor) -> Tensor:
        logits = anchors @ other_view.T / temperature  # (N, M): positive + other-view negatives
        if same_view_negatives:
            own = anchors @ same_view.T / temperature  # (N, M): the anchor itself must not count
            own = own.masked_fill(F.one_hot(positive, same_view.shape[0]).bool(), float("-inf"))
            logits = torch.cat([logits, own], dim=1)
        return F.cross_entropy(logits, positive, reduction="sum")

    total = directional(z_a, keys_b, keys_a) + directional(z_b, keys_a, keys_b)
    return total / (2 * n)


@full_precision
def momentum_infonce(
    queries: Tensor, keys: Tensor, temperature: float = 1.0, scale_by_2t: bool = True
) -> Tensor:
    """MoCo v3's ``ctr(q, k)`` (Chen, Xie, He, ICCV 2021, Algorithm 1): InfoNCE of queries against keys.

    queries: (N, D) online predictions of one view (with gradient); keys: (N, D) momentum-encoder
    projections of the other view. Both L2-normalised; keys are treated as constants (``detach``: they
    come from the momentum encoder) and gathered from every rank, so each query has N_global - 1
    negatives and its positive at ``rank * N + i``. Returns the mean over this rank's queries of
    ``-log softmax(q_i . k / t)[positive]``, times ``2 t`` when ``scale_by_2t`` (the paper's Algorithm 1
    and the official code, which say it makes the gradient scale less sensitive to t).
    """
    check_pair(queries, keys, "momentum_infonce")
    if temperature <= 0:
        raise ValueError(f"momentum_infonce: temperature must be > 0, got {temperature}")
    q = F.normalize(upcast(queries), dim=1)
    k = gather_with_grad(F.normalize(upcast(keys).detach(), dim=1))  # (M, D), no gradient to the keys
    positive = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    loss = F.cross_entropy(q @ k.T / temperature, positive)
    return loss * (2 * temperature) if scale_by_2t else loss
