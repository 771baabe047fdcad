"""Classifier heads on backbone features: the linear probe and E-SSL's rotation classifier."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from equissl.heads.mlp import projection_mlp


class LinearProbe(nn.Module):
    """(B, in_dim) features -> (B, num_classes) logits.

    batch_norm=True standardises the features first with a non-affine BatchNorm (MAE's probe), which
    makes one learning rate fit backbones whose feature scales differ.
    """

    def __init__(self, in_dim: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.norm(features))


class RotationClassifier(nn.Module):
    """E-SSL's four-fold rotation predictor on backbone features: (B, in_dim) -> (B, num_classes) logits.

    ``[Linear -> LayerNorm -> ReLU] * len(hidden_dims) -> Linear(num_classes)``, as the official
    CIFAR-10 code (rdangovs/essl ``cifar10/main.py``: 512-2048-2048-4 with LayerNorm).
    bottleneck_dim > 0 inserts ``Linear(bottleneck_dim) -> LayerNorm`` (no ReLU) before the output,
    as the official ImageNet code (``imagenet/simclr/main.py``: 2048-2048-2048-128-4).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (2048, 2048),
        num_classes: int = 4,
        bottleneck_dim: int = 0,
    ) -> None:
        super().__init__()
        if bottleneck_dim < 0:
            raise ValueError(f"RotationClassifier: bottleneck_dim must be >= 0, got {bottleneck_dim}")
        if bottleneck_dim == 0:
            self.mlp = projection_mlp(in_dim, hidden_dims, num_classes, norm="ln", last_bias=True)
        else:
            trunk = projection_mlp(
                in_dim, hidden_dims, bottleneck_dim, norm="ln", last_norm="ln", last_bias=True
            )
            self.mlp = nn.Sequential(*trunk, nn.Linear(bottleneck_dim, num_classes))

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp(features)
