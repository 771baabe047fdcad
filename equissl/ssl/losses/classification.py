"""Classification losses of equivariant pretext tasks (E-SSL's rotation prediction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.ssl.losses.precision import full_precision, upcast


@full_precision
def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy of rotation prediction (E-SSL), mean over the M rotated crops.

    logits: (M, K) class scores (K = 4 for four-fold rotations); labels: (M,) int64 in [0, K).
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"rotation_loss: expected (M, K) logits and (M,) labels, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.dtype != torch.long:
        raise ValueError(f"rotation_loss: labels must be int64, got {labels.dtype}")
    return F.cross_entropy(upcast(logits), labels)
