"""VICReg's terms (Bardes, Ponce, LeCun, ICLR 2022): invariance, variance, covariance, and their sum.

The variance and covariance are statistics of the rows given; :func:`vicreg_loss` gathers the embeddings
of every rank with gradient first, so they span the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.distributed import gather_with_grad
from equissl.ssl.losses.precision import check_pair, full_precision, upcast


@full_precision
def invariance_loss(z_a: Tensor, z_b: Tensor) -> Tensor:
    """VICReg's invariance term s(Z, Z'): mean over the N x D entries of ``(z_a - z_b) ** 2``.

    z_a, z_b: (N, D). This is ``F.mse_loss`` as in the paper's Algorithm 1 and the official code;
    the paper's eq. (5) writes ``1/N sum_i ||z_i - z'_i||^2`` (no 1/D), a factor D larger, but the
    coefficients (25 / 25 / 1) were set with the mean over D.
    """
    check_pair(z_a, z_b, "invariance_loss")
    return F.mse_loss(upcast(z_a), upcast(z_b))


@full_precision
def variance_loss(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg's variance term v(Z): ``mean_j relu(gamma - sqrt(Var(z[:, j]) + eps))``.

    z: (N, D), N >= 2; Var is the unbiased (N - 1) batch variance of each dimension. Statistics are
    over the rows given: pass gathered embeddings for the global batch (:func:`vicreg_loss` does).
    A collapsed batch (all rows equal) gives exactly ``gamma - sqrt(eps)``.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"variance_loss: expected (N, D) with N >= 2, got {tuple(z.shape)}")
    std = torch.sqrt(upcast(z).var(dim=0) + eps)
    return F.relu(gamma - std).mean()


@full_precision
def covariance_loss(z: Tensor) -> Tensor:
    """VICReg's covariance term c(Z): ``sum_{i != j} C(Z)_ij ** 2 / D``.

    z: (N, D), N >= 2; ``C = (z - mean)^T (z - mean) / (N - 1)`` is the (D, D) batch covariance.
    Statistics are over the rows given (pass gathered embeddings for the global batch).
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"covariance_loss: expected (N, D) with N >= 2, got {tuple(z.shape)}")
    n, d = z.shape
    z = upcast(z)
    z = z - z.mean(dim=0)
    if n < d:
        # sum_ij C_ij^2 = ||Z^T Z||_F^2 / (N-1)^2 = ||Z Z^T||_F^2 / (N-1)^2: the (N, N) Gram matrix is
        # far cheaper than the (D, D) covariance when D = 8192 (the paper's expander).
        all_squares = (z @ z.T).pow(2).sum() / (n - 1) ** 2
        diagonal_squares = (z.pow(2).sum(dim=0) / (n - 1)).pow(2).sum()
        return (all_squares - diagonal_squares) / d
    cov = z.T @ z / (n - 1)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


@full_precision
def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim: float = 25.0,
    var: float = 25.0,
    cov: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    average_branches: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg (Bardes et al., ICLR 2022): ``sim * s(Z, Z') + var * [v(Z) + v(Z')] + cov * [c(Z) + c(Z')]``.

    z_a, z_b: (N, D) expander outputs of the two views. Returns ``(total, terms)`` with the
    unweighted terms ``{"inv": s, "var": v(Z) + v(Z'), "cov": c(Z) + c(Z')}`` (scalars).

    Distributed: like the official code, the invariance term is this rank's mean (its mean over
    ranks is the global mean) and both embeddings are gathered with gradient before the variance
    and covariance, which are statistics of the global batch.

    average_branches=True halves the variance term, ``[v(Z) + v(Z')] / 2``, as the official code
    does (``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``, also lightly);
    the paper's eq. (6) and Algorithm 1 sum the branches (also solo-learn), our default. The
    covariance term is summed over branches in both.
    """
    check_pair(z_a, z_b, "vicreg_loss", min_rows=1)
    inv = invariance_loss(z_a, z_b)
    global_a, global_b = gather_with_grad(z_a), gather_with_grad(z_b)
    if global_a.shape[0] < 2:
        raise ValueError("vicreg_loss: the variance and covariance need a global batch of at least 2")
    variance = variance_loss(global_a, gamma, eps) + variance_loss(global_b, gamma, eps)
    if average_branches:
        variance = variance / 2
    covariance = covariance_loss(global_a) + covariance_loss(global_b)
    total = sim * inv + var * variance + cov * covariance
    return total, {"inv": inv, "var": variance, "cov": covariance}
