"""MLP heads (projectors / expanders / predictors) built from a few declarative choices.

Layout: ``[Linear -> norm -> ReLU] * len(hidden_dims) -> Linear -> last_norm``. A linear layer that
feeds a BatchNorm has no bias (BatchNorm's mean subtraction cancels it exactly); before LayerNorm or
no norm it keeps its bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

HiddenNorm = Literal["bn", "ln", "none"]
# "bn_scale_only": BatchNorm with a learned scale but no shift (google-research/simclr's projector
# output, ``center=False``); "bn_no_affine": plain standardisation (E-SSL's CIFAR projector output).
LastNorm = Literal["none", "bn", "bn_scale_only", "bn_no_affine", "ln"]


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with a learned per-feature scale and no learned shift (``bias`` is None, which
    ``F.batch_norm`` accepts)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        self.bias = None

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)


def _norm(kind: str, dim: int) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "bn":
        return nn.BatchNorm1d(dim)
    if kind == "bn_scale_only":
        return ScaleOnlyBatchNorm1d(dim)
    if kind == "bn_no_affine":
        return nn.BatchNorm1d(dim, affine=False)
    if kind == "ln":
        return nn.LayerNorm(dim)
    raise ValueError(f"unknown norm {kind!r} (known: none, bn, bn_scale_only, bn_no_affine, ln)")


def projection_mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    norm: HiddenNorm = "bn",
    last_norm: LastNorm = "none",
    last_bias: bool = False,
) -> nn.Sequential:
    """(B, in_dim) -> (B, out_dim) MLP with ``len(hidden_dims)`` hidden ``Linear -> norm -> ReLU`` blocks.

    norm: normalisation of the hidden layers; last_norm: of the output; last_bias: bias of the
    output layer (dropped anyway when a BatchNorm follows). Examples:
    SimCLR (official code) ``projection_mlp(2048, [2048], 128, "bn", "bn_scale_only")``;
    VICReg ``projection_mlp(2048, [8192, 8192], 8192, "bn", "none")``.
    """
    if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden_dims):
        raise ValueError(
            f"projection_mlp: dimensions must be positive, got {in_dim}, {list(hidden_dims)}, {out_dim}"
        )
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        block_norm = _norm(norm, hidden)
        layers.append(nn.Linear(width, hidden, bias=not isinstance(block_norm, nn.BatchNorm1d)))
        if block_norm is not None:
            layers.append(block_norm)
        layers.append(nn.ReLU(inplace=True))
        width = hidden
    output_norm = _norm(last_norm, out_dim)
    layers.append(nn.Linear(width, out_dim, bias=last_bias and not isinstance(output_norm, nn.BatchNorm1d)))
    if output_norm is not None:
        layers.append(output_norm)
    return nn.Sequential(*layers)
