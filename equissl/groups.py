"""Group actions on images and feature maps, shared by backbones, augmentations and evaluations.

- :class:`Group`: the rotation groups C_N and the dihedral groups D_N acting on the pixel grid (steerable
  backbones, equivariance checks). Elements are indexed ``m * N + k`` for ``r^k f^m``: rotation by
  ``k * 360/N`` degrees counter-clockwise as displayed, after a left-right mirror ``f`` when ``m = 1``.
  Multiples of 90 degrees and mirrors are pixel permutations (exact); other angles interpolate.
- :func:`circular_shift`: per-sample circular translations (shift-equivariant ViTs, shift consistency).
- :func:`rotate_four_ways` / :func:`rotate_by_index`: four-fold rotations (E-SSL's rotation prediction).
  Convention: rotation index ``k`` in {0, 1, 2, 3} means ``torch.rot90(x, k, dims=(2, 3))``, a rotation
  by ``k * 90`` degrees *counter-clockwise as the image is displayed* (row 0 at the top): the top-right
  corner moves to the top-left; ``k * pi / 2`` radians in the same sense. ``-k`` undoes it exactly. This
  is element ``k`` of C4 in :class:`Group`.

A leaf module: it imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------------------------------
# C_N and D_N on the pixel grid.


def rotate_interpolated(x: Tensor, angle: float, mode: str = "bicubic") -> Tensor:
    """Rotate the last two (square) dims of ``x`` by ``angle`` radians counter-clockwise about the centre.

    ``grid_sample`` interpolation (bicubic by default), zero outside; the direction matches
    ``torch.rot90(x, 1, dims=(-2, -1))`` at pi/2.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs a square grid, got {tuple(x.shape[-2:])}")
    if x.shape[-1] == 1:  # a single pixel (1x1 filter) is its own rotation
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    cos, sin = math.cos(angle), math.sin(angle)
    # Output normalised (x, y) samples the input at R(angle) (x, y): at pi/2 out[i, j] = in[j, W-1-i].
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=flat.dtype, device=flat.device)
    grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=True)
    out = F.grid_sample(flat, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(*lead, *x.shape[-2:])


def quarter_turn(x: Tensor, k: int) -> Tensor:
    """``torch.rot90(x, k, dims=(-2, -1))`` written as flips and a transpose, the same pixel permutation.

    torch's ONNX exporter has no ``rot90``; flips and transposes export, so models that turn their input
    (frame averaging, canonicalization) export whole.
    """
    k %= 4
    if k == 1:
        return x.flip(-1).transpose(-2, -1)
    if k == 2:
        return x.flip((-2, -1))
    if k == 3:
        return x.transpose(-2, -1).flip(-1)
    return x


@dataclass(frozen=True)
class Group:
    """C_N (``kind="C"``, order N) or D_N (``kind="D"``, order 2N) acting on the pixel grid."""

    kind: Literal["C", "D"]
    n: int

    def __post_init__(self) -> None:
        if self.kind not in ("C", "D"):
            raise ValueError(f"group kind must be 'C' or 'D', got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"group N must be >= 1, got {self.n}")

    @property
    def order(self) -> int:
        return self.n * (2 if self.kind == "D" else 1)

    def element(self, index: int) -> tuple[int, int]:
        """(k, m) of element ``index``: rotation ``r^k`` after ``m`` mirrors."""
        return index % self.n, index // self.n

    def index(self, k: int, m: int) -> int:
        return (m % 2) * self.n + k % self.n

    def compose(self, a: int, b: int) -> int:
        """Index of ``a b`` (``b`` acts first). Uses ``f r = r^-1 f``."""
        ka, ma = self.element(a)
        kb, mb = self.element(b)
        return self.index(ka + (-kb if ma else kb), ma + mb)

    def inverse(self, a: int) -> int:
        k, m = self.element(a)
        return self.index(k if m else -k, m)

    @cached_property
    def regular_permutation(self) -> Tensor:
        """(|G|, |G|) long: row ``g`` holds ``g^-1 h`` for every ``h`` (the filter's group-axis gather)."""
        return torch.tensor(
            [[self.compose(self.inverse(g), h) for h in range(self.order)] for g in range(self.order)]
        )

    @property
    def all_exact(self) -> bool:
        """Whether every element acts by a pixel permutation (N in 1, 2, 4)."""
        return all(self.exact(g) for g in range(self.order))

    def exact(self, index: int) -> bool:
        """Whether ``T_g`` is a pixel permutation (multiple of 90 degrees, possibly mirrored)."""
        k, _ = self.element(index)
        return (4 * k) % self.n == 0

    def transform_image(self, x: Tensor, index: int) -> Tensor:
        """``T_g x`` on the last two (square) dims: mirror left-right if m, then rotate by k 360/N deg."""
        k, m = self.element(index)
        if m:
            x = torch.flip(x, dims=(-1,))
        if self.n % 4 == 0:
            quarter, rest = divmod(k, self.n // 4)
        elif (4 * k) % self.n == 0:
            quarter, rest = (4 * k) // self.n, 0
        else:
            quarter, rest = 0, k
        if rest:
            x = rotate_interpolated(x, 2 * math.pi * rest / self.n)
        return quarter_turn(x, quarter)

    def transform_regular(self, features: Tensor, index: int, group_dim: int = 2) -> Tensor:
        """The regular representation: ``(g . F)[..., h, :, :] = T_g F[..., g^-1 h, :, :]``.

        ``features`` has the group axis at ``group_dim`` and the spatial axes last, e.g. (B, C, |G|, H, W).
        """
        if features.shape[group_dim] != self.order:
            raise ValueError(
                f"group axis {group_dim} has size {features.shape[group_dim]}, expected {self.order}"
            )
        gather = self.regular_permutation[index].to(features.device)
        return self.transform_image(features.index_select(group_dim, gather), index)


def parse_group(name: str) -> Group:
    """'c4' / 'C8' / 'd4' -> :class:`Group`."""
    name = name.strip()
    if len(name) < 2 or name[0].upper() not in "CD" or not name[1:].isdigit():
        raise ValueError(f"group must look like 'c4', 'c8' or 'd4', got {name!r}")
    return Group(name[0].upper(), int(name[1:]))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Circular shifts.


def circular_shift(x: Tensor, shifts: Tensor) -> Tensor:
    """Per-sample ``torch.roll``: ``out[b, :, y, x] = x[b, :, y - shifts[b, 0], x - shifts[b, 1]]`` (mod H, W).

    ``x`` (B, C, H, W); ``shifts`` (B, 2) integer pixels (rows, columns). Differentiable in ``x``.
    """
    b, c, h, w = x.shape
    shifts = shifts.to(device=x.device, dtype=torch.long)
    rows = (torch.arange(h, device=x.device)[None, :] - shifts[:, :1]) % h  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] - shifts[:, 1:]) % w  # (B, W)
    x = torch.gather(x, 2, rows[:, None, :, None].expand(b, c, h, w))
    return torch.gather(x, 3, cols[:, None, None, :].expand(b, c, h, w))


# ----------------------------------------------------------------------------------------------------
# Four-fold rotations.


def _check_square(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"90-degree rotations in a batch need square images, got {tuple(x.shape[-2:])}")


def rotate_four_ways(x: Tensor) -> tuple[Tensor, Tensor]:
    """Every image under all four rotations.

    x: (B, C, H, H). Returns ``x_rot`` (4B, C, H, H), rotation-major: rows ``k*B .. (k+1)*B - 1`` hold
    ``torch.rot90(x, k, dims=(2, 3))``; and ``labels`` (4B,) int64 with those ``k``.
    """
    _check_square(x)
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotate_by_index(x: Tensor, rotation_index: Tensor) -> Tensor:
    """Rotate image b by ``rotation_index[b] * 90`` degrees counter-clockwise; indices are taken mod 4."""
    _check_square(x)
    index = rotation_index.detach().cpu().remainder(4)
    out = x.clone()
    for k in range(1, 4):
        rows = (index == k).nonzero().squeeze(1).to(x.device)
        if rows.numel():
            out[rows] = torch.rot90(x.index_select(0, rows), k, dims=(2, 3))
    return out
