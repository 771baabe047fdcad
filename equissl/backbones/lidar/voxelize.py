"""Hard pillar voxelization in pure PyTorch (what OpenPCDet's ``transform_points_to_voxels`` does with
spconv's ``VoxelGenerator``), plus the point -> BEV-cell mapping the objectives and probes share.

Conventions (OpenPCDet's):
- ``point_cloud_range`` = (x_min, y_min, z_min, x_max, y_max, z_max), metres, sensor frame (x forward,
  y left, z up); ``voxel_size`` = (dx, dy, dz) metres; for pillars ``dz = z_max - z_min`` so nz = 1.
- grid size (nx, ny, nz) = round((max - min) / size); a point belongs to cell
  ``floor((p - min) / size)`` and is dropped when outside [0, n) on any axis.
- ``voxel_coords`` rows are (batch index, z, y, x) cell indices; the BEV canvas is (B, C, ny, nx).

Input batches are *padded* point tensors (B, N, C) whose padding rows (and any point with a NaN or an
infinite coordinate) are ignored: a NaN row is how an empty slot is written, so empty sweeps need no
special case (they give no pillars).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Pillars:
    """A batch of non-empty pillars.

    voxels: (P, max_points, C) float, the points of each pillar, zero-padded (OpenPCDet ``voxels``).
    num_points: (P,) int64, points kept per pillar, in [1, max_points] (``voxel_num_points``).
    coords: (P, 4) int64 (batch, z, y, x) cell indices (``voxel_coords``).
    batch_size: B (kept explicitly: trailing empty samples have no pillars).
    """

    voxels: Tensor
    num_points: Tensor
    coords: Tensor
    batch_size: int


def grid_size(point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """(nx, ny, nz) of the voxel grid; raises ValueError when the range is not a whole number of voxels."""
    sizes = []
    for axis in range(3):
        extent = point_cloud_range[axis + 3] - point_cloud_range[axis]
        if extent <= 0 or voxel_size[axis] <= 0:
            raise ValueError(
                f"point_cloud_range {tuple(point_cloud_range)} / voxel_size {tuple(voxel_size)}: "
                "every extent and voxel size must be > 0"
            )
        count = extent / voxel_size[axis]
        if abs(count - round(count)) > 1e-4:
            raise ValueError(
                f"point_cloud_range extent {extent:g} m on axis {'xyz'[axis]} is not a whole number "
                f"of voxels of {voxel_size[axis]:g} m"
            )
        sizes.append(round(count))
    return sizes[0], sizes[1], sizes[2]


def valid_point_mask(points: Tensor) -> Tensor:
    """(..., C) -> (...) bool: rows whose every value is finite (padding rows are NaN)."""
    return torch.isfinite(points).all(dim=-1)


@torch.no_grad()
def voxelize(
    points: Tensor,
    point_cloud_range: Sequence[float],
    voxel_size: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
) -> Pillars:
    """Group a padded batch (B, N, C) of points (x, y, z, features...) into pillars.

    Within a pillar, points keep their input order and the first ``max_points_per_voxel`` are kept; per
    sample, pillars are kept in the order of their first point, up to ``max_voxels`` (as spconv's
    generator does on a shuffled cloud). Points outside the range or with non-finite values are dropped.
    """
    if points.ndim != 3 or points.shape[-1] < 3:
        raise ValueError(f"points must be (B, N, C>=3), got {tuple(points.shape)}")
    batch, count, channels = points.shape
    device = points.device
    nx, ny, nz = grid_size(point_cloud_range, voxel_size)
    low = torch.tensor(point_cloud_range[:3], dtype=points.dtype, device=device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=device)
    dims = torch.tensor([nx, ny, nz], device=device)

    valid = valid_point_mask(points)
    xyz = torch.where(valid.unsqueeze(-1), points[..., :3], low)  # NaN rows get a harmless placeholder
    cell = torch.floor((xyz - low) / size).long()
    valid &= ((cell >= 0) & (cell < dims)).all(dim=-1)

    flat_index = valid.reshape(-1).nonzero().squeeze(1)  # (M,), ordered by (batch, point index)
    sample = flat_index // count
    cell = cell.reshape(-1, 3)[flat_index]
    key = ((sample * nz + cell[:, 2]) * ny + cell[:, 1]) * nx + cell[:, 0]
    key_sorted, order = torch.sort(key, stable=True)  # stable: input order within a pillar
    unique_keys, inverse, counts = torch.unique_consecutive(
        key_sorted, return_inverse=True, return_counts=True
    )
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(key_sorted.numel(), device=device) - starts[inverse]

    # Pillar order within a sample: by the flat index of its first point (the group's first element).
    first_point = flat_index[order[starts]] if unique_keys.numel() else flat_index[:0]
    pillar_sample = unique_keys // (nz * ny * nx)
    by_appearance = torch.argsort(first_point)
    appearance_rank = torch.empty_like(by_appearance)
    appearance_rank[by_appearance] = torch.arange(by_appearance.numel(), device=device)
    per_sample_start = torch.zeros(batch + 1, dtype=torch.long, device=device)
    per_sample_start[1:] = torch.cumsum(torch.bincount(pillar_sample, minlength=batch), 0)
    ordinal = appearance_rank - per_sample_start[pillar_sample]
    keep_pillar = ordinal < max_voxels
    new_id = torch.full_like(unique_keys, -1)
    kept = by_appearance[keep_pillar[by_appearance]]  # kept pillars, in appearance order
    new_id[kept] = torch.arange(kept.numel(), device=device)

    keep_point = (rank < max_points_per_voxel) & keep_pillar[inverse]
    voxels = points.new_zeros(kept.numel(), max_points_per_voxel, channels)
    source_rows = points.reshape(-1, channels)[flat_index[order[keep_point]]]
    voxels[new_id[inverse[keep_point]], rank[keep_point]] = source_rows
    num_points = counts[kept].clamp(max=max_points_per_voxel)
    pillar_key = unique_keys[kept]
    x = pillar_key % nx
    y = (pillar_key // nx) % ny
    z = (pillar_key // (nx * ny)) % nz
    coords = torch.stack([pillar_sample[kept], z, y, x], dim=1)
    return Pillars(voxels=voxels, num_points=num_points, coords=coords, batch_size=batch)


def bev_grid_coordinates(xyz: Tensor, point_cloud_range: Sequence[float]) -> Tensor:
    """(..., >=2) metres -> (..., 2) coordinates in [-1, 1] over the BEV range, for ``F.grid_sample`` with
    ``align_corners=False`` on a (B, C, ny', nx') map covering the range at any stride: -1 / +1 are the
    outer edges of the first / last cell, the (x, y) order is grid_sample's (width, height)."""
    x_min, y_min, _, x_max, y_max, _ = point_cloud_range
    u = (xyz[..., 0] - x_min) / (x_max - x_min) * 2 - 1
    v = (xyz[..., 1] - y_min) / (y_max - y_min) * 2 - 1
    return torch.stack([u, v], dim=-1)


def inside_bev(xyz: Tensor, point_cloud_range: Sequence[float], margin: float = 0.0) -> Tensor:
    """(..., >=3) -> (...) bool: finite points inside the range (x, y, z), ``margin`` metres in from x/y."""
    x_min, y_min, z_min, x_max, y_max, z_max = point_cloud_range
    finite = torch.isfinite(xyz[..., :3]).all(dim=-1)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return (
        finite
        & (x >= x_min + margin)
        & (x < x_max - margin)
        & (y >= y_min + margin)
        & (y < y_max - margin)
        & (z >= z_min)
        & (z < z_max)
    )
