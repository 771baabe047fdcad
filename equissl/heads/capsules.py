"""Self-routing capsules (Hahn, Pyeon & Kim, NeurIPS 2019) on a ResNet trunk.

:class:`SelfRoutingCapsules` turns a spatial map (B, C, h, w) into ``num_capsules`` capsules, each an
activation in (0, 1) and a d x d pose matrix (d = 3 or 4):

1. *Primary capsules*: at every position, ``num_primary`` capsule types with activation
   ``a = sigmoid(BN(conv_a(x)))`` and pose ``P = BN(conv_pose(x))`` reshaped to d x d (3x3 convs, as in
   SR-CapsNet and EquiCaps).
2. *Self-routing* (no routing iterations): every lower capsule i routes with its own learned linear map
   of its flattened pose, ``r_i = softmax_j(W^route_i vec(P_i) + b_i)`` over the upper capsules j
   (zero-initialised: uniform routing at the start). Votes use pose transformation matrices,
   ``V_ij = T_ij P_i`` (d x d). With ``c_ij = a_i r_ij``:

       a_j = sum_i c_ij / sum_i a_i,        P_j = sum_i c_ij V_ij / sum_i c_ij.

   Writing the vote as ``T_ij P_i`` (transformation on the left) means a right action ``P -> P R`` on
   the lower poses reaches the votes unchanged in form, the convention EquiCaps uses for its pose loss
   (``P_x R = P_y``).

Lower capsules are all (position, type) pairs. With ``map_size=None`` (default) the transformation and
routing weights are shared over positions (any map size works); with ``map_size=s`` each of the s*s
positions has its own weights, as SR-CapsNet's final layer (kernel = whole map), and the map must be
s x s. The pose aggregation is contracted without materialising the (B, h*w*A, num_capsules, d, d) votes.

Initialisation. Routing weights start at zero (uniform routing), as SR-CapsNet and EquiCaps. The vote
transformations ``T_ij`` are drawn with the official EquiCaps code's standard deviation by default: its
votes are a learned (d^2 x d^2) linear map per (i, j), stored as a (kkA, J d^2, d^2) tensor and drawn
with ``nn.init.kaiming_normal_`` (fan-in ``J d^4``), std ``sqrt(2 / (J d^4))`` -- 0.028 for 32 capsules
of 3x3 poses (:func:`official_vote_std`). Our T_ij are d x d, so at that std the votes start smaller
than the code's (by sqrt(d)) and much smaller than the poses; the loss reads Frobenius-normalised poses,
so only the parameters' own scale matters, which under Adam sets how fast they move relative to their
size. ``vote_init_std > 0`` draws another std (``1 / sqrt(d)``, 0.58 for 3x3, keeps vote entries at the
pose's scale: the earlier default).

A head: it reads any backbone's spatial map (EquiCaps puts it on any backbone; the ``capsnet_resnet18``
backbone, :mod:`equissl.backbones.capsules`, builds one into its readout).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def official_vote_std(num_capsules: int, pose_dim: int) -> float:
    """Std of the official EquiCaps vote weights: ``kaiming_normal_`` (fan-in mode, ReLU gain) of a
    (kkA, num_capsules * d^2, d^2) tensor, whose fan-in is ``num_capsules * d^4``."""
    return math.sqrt(2.0 / (num_capsules * pose_dim**4))


class SelfRoutingCapsules(nn.Module):
    """Spatial map (B, in_channels, h, w) -> activations (B, num_capsules), poses (B, num_capsules, d, d)."""

    def __init__(
        self,
        in_channels: int,
        num_capsules: int = 32,
        pose_dim: int = 3,
        num_primary: int = 32,
        map_size: int | None = None,
        eps: float = 1e-8,
        vote_init_std: float = 0.0,
    ) -> None:
        super().__init__()
        if pose_dim < 1 or num_capsules < 1 or num_primary < 1:
            raise ValueError("pose_dim, num_capsules and num_primary must be positive")
        if map_size is not None and map_size < 1:
            raise ValueError(f"map_size must be None or positive, got {map_size}")
        if vote_init_std < 0:
            raise ValueError(
                f"vote_init_std must be >= 0 (0: the official initialisation), got {vote_init_std}"
            )
        self.num_capsules, self.pose_dim, self.num_primary = num_capsules, pose_dim, num_primary
        self.map_size, self.eps = map_size, eps
        d2 = pose_dim * pose_dim
        self.conv_a = nn.Conv2d(in_channels, num_primary, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(num_primary)
        self.conv_pose = nn.Conv2d(in_channels, num_primary * d2, 3, padding=1, bias=False)
        self.bn_pose = nn.BatchNorm2d(num_primary * d2)
        positions = 1 if map_size is None else map_size * map_size
        # (L, A, J, d, d) transformation matrices, the official code's std unless given (module docstring)
        std = vote_init_std or official_vote_std(num_capsules, pose_dim)
        self.transform = nn.Parameter(
            torch.randn(positions, num_primary, num_capsules, pose_dim, pose_dim) * std
        )
        self.route_weight = nn.Parameter(torch.zeros(positions, num_primary, d2, num_capsules))
        self.route_bias = nn.Parameter(torch.zeros(positions, num_primary, num_capsules))

    def primary(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) -> activations (B, h*w, A), poses (B, h*w, A, d, d)."""
        b, _, h, w = x.shape
        if self.map_size is not None and (h, w) != (self.map_size, self.map_size):
            raise ValueError(f"capsules built for a {self.map_size}x{self.map_size} map, got {h}x{w}")
        d = self.pose_dim
        a = torch.sigmoid(self.bn_a(self.conv_a(x))).flatten(2).transpose(1, 2)
        pose = self.bn_pose(self.conv_pose(x)).view(b, self.num_primary, d * d, h * w)
        pose = pose.permute(0, 3, 1, 2).reshape(b, h * w, self.num_primary, d, d)
        return a, pose

    def route(self, a: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """Lower capsules (B, L, A), (B, L, A, d, d) -> upper (B, J), (B, J, d, d)."""
        b, positions, types = a.shape
        logits = torch.einsum("blak,lakj->blaj", pose.reshape(b, positions, types, -1), self.route_weight)
        routing = torch.softmax(logits + self.route_bias, dim=-1)  # (B, L, A, J)
        weight = a.unsqueeze(-1) * routing  # c_ij = a_i r_ij
        weight_sum = weight.sum(dim=(1, 2))  # (B, J)
        activations = weight_sum / (a.sum(dim=(1, 2)).unsqueeze(-1) + self.eps)
        coeff = weight / (weight_sum[:, None, None, :] + self.eps)
        if self.map_size is None:
            # sum_l,a c T_aj P_la = sum_a T_aj (sum_l c P_la): contract positions first.
            mixed = torch.einsum("blaj,blaxy->bajxy", coeff, pose)
            poses = torch.einsum("ajxy,bajyz->bjxz", self.transform[0], mixed)
        else:
            poses = torch.einsum("lajxy,blaj,blayz->bjxz", self.transform, coeff, pose)
        return activations, poses

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) -> activations (B, num_capsules) in (0, 1), poses (B, num_capsules, d, d)."""
        return self.route(*self.primary(x))
