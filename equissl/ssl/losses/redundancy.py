"""Redundancy reduction: Barlow Twins' cross-correlation loss (Zbontar et al., ICML 2021).

The per-dimension standardisation and the cross-correlation are statistics of the *global* batch: both
embeddings are gathered from every rank with gradient (:func:`equissl.distributed.gather_with_grad`), so
every rank computes the single-process loss of the global batch (its mean over ranks is that loss, and
DDP's average of the gradients is its gradient).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from equissl.distributed import gather_with_grad
from equissl.ssl.losses.precision import check_pair, full_precision, upcast

Standardisation = Literal["std", "batchnorm"]


def standardise(z: Tensor, how: Standardisation = "std", eps: float = 1e-5) -> Tensor:
    """(N, D) -> (N, D) with every column of mean 0 and unit spread over the N rows.

    ``"std"``: divide by the unbiased (N - 1) standard deviation, no epsilon: the paper's Algorithm 1
    (``(z - z.mean(0)) / z.std(0)``). ``"batchnorm"``: divide by ``sqrt(biased variance + eps)``, what the
    official code's ``nn.BatchNorm1d(D, affine=False)`` does in training mode (eps 1e-5).
    """
    centred = z - z.mean(dim=0)
    if how == "std":
        return centred / z.std(dim=0)
    if how == "batchnorm":
        return centred / torch.sqrt(z.var(dim=0, unbiased=False) + eps)
    raise ValueError(f"standardise: unknown standardisation {how!r}; expected 'std' or 'batchnorm'")


@full_precision
def barlow_twins_loss(
    z_a: Tensor,
    z_b: Tensor,
    lambda_offdiag: float = 5e-3,
    standardisation: Standardisation = "std",
    eps: float = 1e-5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Barlow Twins: ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.

    z_a, z_b: (N, D) projector outputs of the two views. ``C = za_n^T zb_n / N_global`` (D, D) is the
    cross-correlation of the column-standardised embeddings (:func:`standardise`) over the global batch.
    Returns ``(total, {"on_diag": ..., "off_diag": ...})`` with the unweighted terms.

    lambda: 5e-3 in the paper; the official code's default is 0.0051.
    """
    check_pair(z_a, z_b, "barlow_twins_loss")
    global_a, global_b = gather_with_grad(upcast(z_a)), gather_with_grad(upcast(z_b))
    n = global_a.shape[0]
    if n < 2:
        raise ValueError("barlow_twins_loss: the standardisation needs a global batch of at least 2")
    correlation = (
        standardise(global_a, standardisation, eps).T @ standardise(global_b, standardisation, eps) / n
    )
    diagonal = torch.diagonal(correlation)
    on_diag = (diagonal - 1).pow(2).sum()
    off_diag = correlation.pow(2).sum() - diagonal.pow(2).sum()
    return on_diag + lambda_offdiag * off_diag, {"on_diag": on_diag, "off_diag": off_diag}
