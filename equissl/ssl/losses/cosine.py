"""Cosine losses between a prediction and a target (BYOL, SimSiam, seq-JEPA, E-SSL3D's flow term).

Pure functions: they take the target as given, so a stop-gradient is the caller's ``detach()`` (or a
target computed under ``torch.no_grad()``), which keeps where the gradient stops visible in the method.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from equissl.ssl.losses.precision import full_precision, upcast


def _check(prediction: Tensor, target: Tensor) -> None:
    if prediction.ndim != 2 or prediction.shape != target.shape:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )


@full_precision
def negative_cosine_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``1 - mean_i cos(prediction_i, target_i)`` for (N, D) tensors; in [0, 2], 0 iff aligned.

    seq-JEPA's loss (and SimSiam's ``-cos`` up to the constant 1).
    """
    _check(prediction, target)
    return 1.0 - F.cosine_similarity(upcast(prediction), upcast(target), dim=1).mean()


@full_precision
def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's ``mean_i ||p_i / |p_i| - z_i / |z_i| ||^2 = mean_i (2 - 2 cos(p_i, z_i))`` for (N, D) tensors.

    Grill et al. 2020, eq. (2); twice :func:`negative_cosine_loss`. In [0, 4], 0 iff aligned.
    """
    _check(prediction, target)
    cosine = (F.normalize(upcast(prediction), dim=1) * F.normalize(upcast(target), dim=1)).sum(dim=1)
    return (2 - 2 * cosine).mean()
