"""Batched point-cloud augmentations that return their parameters, and the ``"lidar_pair"`` view maker.

One draw per sample of a global similarity transform of the sensor frame, applied in OpenPCDet's order
(``random_world_flip``, ``random_world_rotation``, ``random_world_scaling``, then translation):

    p' = scale * R_z(angle) @ F @ p + translation,   F = diag(1, -1, 1) when flip else I

Parameters (per-sample tensors, units):
    ``flip``: (B,) float 0/1 -- mirror y -> -y (OpenPCDet's flip "along x");
    ``angle``: (B,) radians, counter-clockwise about +z;
    ``rotation_index``: (B,) int64, k when ``angle = 2 pi k / rotation_bins`` (discrete rotations), else -1;
    ``scale``: (B,) factor;
    ``translation``: (B, 3) metres, added last.
Boxes are OpenPCDet's (K, 7) ``(x, y, z, dx, dy, dz, heading)``: centres move like points, sizes scale,
heading -> -heading under the flip then + angle, wrapped to [-pi, pi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from equissl.registry import VIEW_MAKERS
from equissl.types import Views, ViewSpec

PARAM_KEYS = ("flip", "angle", "rotation_index", "scale", "translation")


@dataclass
class PointAugmentConfig:
    """Ranges of the point augmentations (in a LiDAR dataset's ``data.point_augment`` section)."""

    rotation_bins: int = 4  # > 0: angle uniform over {2 pi k / bins}; 0: uniform in rotation_range
    rotation_range: tuple[float, float] = (-0.78539816, 0.78539816)  # radians, when rotation_bins == 0
    scale_range: tuple[float, float] = (0.95, 1.05)  # OpenPCDet's WORLD_SCALE_RANGE
    flip_prob: float = 0.5
    translation_std: tuple[float, float, float] = (0.2, 0.2, 0.2)  # metres, OpenPCDet's NOISE_TRANSLATE_STD

    def validate(self) -> None:
        if self.rotation_bins < 0:
            raise ValueError(f"point_augment.rotation_bins must be >= 0, got {self.rotation_bins}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"point_augment.scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if not 0 <= self.flip_prob <= 1 or min(self.translation_std) < 0:
            raise ValueError("point_augment.flip_prob must be in [0, 1] and translation_std >= 0")


def identity_params(batch: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    return {
        "flip": torch.zeros(batch, device=device),
        "angle": torch.zeros(batch, device=device),
        "rotation_index": torch.zeros(batch, dtype=torch.long, device=device),
        "scale": torch.ones(batch, device=device),
        "translation": torch.zeros(batch, 3, device=device),
    }


def sample_params(
    batch: int,
    cfg: PointAugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """One parameter draw per sample (see the module docstring for keys and units)."""

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    flip = (uniform(batch) < cfg.flip_prob).float()
    if cfg.rotation_bins > 0:
        index = torch.randint(cfg.rotation_bins, (batch,), generator=generator, device=device)
        angle = index.float() * (2 * math.pi / cfg.rotation_bins)
        angle = torch.where(angle >= math.pi, angle - 2 * math.pi, angle)  # in [-pi, pi)
    else:
        low, high = cfg.rotation_range
        angle = low + (high - low) * uniform(batch)
        index = torch.full((batch,), -1, dtype=torch.long, device=device)
    low, high = cfg.scale_range
    scale = low + (high - low) * uniform(batch)
    std = torch.tensor(cfg.translation_std, device=device)
    translation = torch.randn(batch, 3, generator=generator, device=device) * std
    return {"flip": flip, "angle": angle, "rotation_index": index, "scale": scale, "translation": translation}


def transform_matrix(params: dict[str, Tensor]) -> Tensor:
    """(B, 4, 4) homogeneous matrices of the transforms ``params`` describe (p' = M @ [p, 1])."""
    angle, scale = params["angle"], params["scale"]
    batch = angle.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.zeros(batch, 4, 4, dtype=angle.dtype, device=angle.device)
    mirror = 1 - 2 * params["flip"].to(angle.dtype)  # -1 flips y
    matrix[:, 0, 0], matrix[:, 0, 1] = scale * cos, -scale * sin * mirror
    matrix[:, 1, 0], matrix[:, 1, 1] = scale * sin, scale * cos * mirror
    matrix[:, 2, 2] = scale
    matrix[:, :3, 3] = params["translation"].to(angle.dtype)
    matrix[:, 3, 3] = 1
    return matrix


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Apply (B, 4, 4) matrices to the xyz of (B, N, C) points; other channels (and NaN rows) pass through."""
    xyz = points[..., :3] @ matrix[:, :3, :3].transpose(1, 2).to(points.dtype) + matrix[:, None, :3, 3].to(
        points.dtype
    )
    return torch.cat([xyz, points[..., 3:]], dim=-1)


def apply_params(points: Tensor, params: dict[str, Tensor]) -> Tensor:
    """(B, N, C) points -> the same points transformed by ``params``."""
    return transform_points(points, transform_matrix(params))


def wrap_angle(angle: Tensor) -> Tensor:
    """Radians -> [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def apply_params_to_boxes(boxes: Tensor, params: dict[str, Tensor]) -> Tensor:
    """(B, K, 7) boxes ``(x, y, z, dx, dy, dz, heading)`` -> the same boxes under the transform."""
    centers = apply_params(boxes[..., :3], params)
    sizes = boxes[..., 3:6] * params["scale"].view(-1, 1, 1).to(boxes.dtype)
    mirror = (1 - 2 * params["flip"]).view(-1, 1).to(boxes.dtype)
    heading = wrap_angle(boxes[..., 6] * mirror + params["angle"].view(-1, 1).to(boxes.dtype))
    return torch.cat([centers, sizes, heading.unsqueeze(-1)], dim=-1)


def box_corners(boxes: Tensor) -> Tensor:
    """(..., 7) boxes -> (..., 8, 3) corners (bottom face first, counter-clockwise from (+dx/2, +dy/2))."""
    signs = torch.tensor(
        [[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]],
        dtype=boxes.dtype,
        device=boxes.device,
    )
    local = signs * boxes[..., None, 3:6] / 2
    cos, sin = torch.cos(boxes[..., 6:7]), torch.sin(boxes[..., 6:7])
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([x, y, local[..., 2]], dim=-1) + boxes[..., None, :3]


class PointAugment(nn.Module):
    """``points_out, params = PointAugment(cfg)(points, generator)`` on a (B, N, C) batch on the device."""

    def __init__(self, cfg: PointAugmentConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg

    def forward(
        self, points: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        params = sample_params(points.shape[0], self.cfg, generator, points.device)
        return apply_params(points, params), params


class LidarPairViewMaker(nn.Module):
    """Views of consecutive sweeps for ``ViewSpec(source="lidar_pair", num_views=k)``.

    Batch (from :meth:`equissl.datasets.lidar.LidarPairDataset.collate_fn`): ``points`` (B, N, C) frame t,
    ``points_next`` (B, M, C) frame t+1 (NaN rows are padding), ``flow`` (B, N, 3) metres in the frame-t
    sensor frame (``p + flow`` is where the surface point is at t+1, frame-t coordinates), ``relative_pose``
    (B, 4, 4) taking frame-t sensor coordinates to frame-(t+1) ones, ``flow_is_ground_truth`` (B,) bool,
    optionally ``boxes`` (B, K, 7) and ``box_labels`` (B, K) (-1 = padding).

    Views: ``points[0:k]`` (B, N, C) are k independent augmentations of frame t (rows stay aligned with
    the batch's ``points``: row i of every view is the same physical point); ``points[k]`` is one
    augmentation of frame t+1; ``params[i]`` are the parameters of view i (module docstring); ``images``
    is empty.
    ``extras``: ``"next_view"`` = k; ``"flow_target"`` (B, N, 3): every frame-t point carried by its flow
    into view k's coordinates, ``A_k(relative_pose @ (p + flow))`` (NaN on padding) -- the cell of view k
    where frame-t point i should be found; ``"flow"``, ``"relative_pose"``, ``"flow_is_ground_truth"``
    passed through; ``"boxes"`` (list of (B, K, 7), one per view, when the batch has boxes) and
    ``"box_labels"``.
    """

    def __init__(self, cfg: PointAugmentConfig, spec: ViewSpec):
        super().__init__()
        if spec.source != "lidar_pair" or spec.num_views < 1:
            raise ValueError(
                f"LidarPairViewMaker makes ViewSpec(source='lidar_pair', num_views >= 1), got {spec}"
            )
        self.augment = PointAugment(cfg)
        self.spec = spec

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Views:
        spec = self.spec
        for key in ("points", "points_next", "flow", "relative_pose"):
            if key not in batch:
                raise ValueError(
                    f"batch lacks {key!r} (has {sorted(batch)}); source 'lidar_pair' needs a LiDAR pair "
                    "dataset (lidar_sim, kitti_odometry)"
                )
        points, points_next = batch["points"].float(), batch["points_next"].float()
        images, params = [], []
        for _ in range(spec.num_views):
            view, view_params = self.augment(points, generator)
            images.append(view)
            params.append(view_params)
        next_view, next_params = self.augment(points_next, generator)
        moved = points[..., :3] + batch["flow"].float()
        in_next_frame = transform_points(moved, batch["relative_pose"].float())
        extras = {
            "next_view": spec.num_views,
            "flow_target": apply_params(in_next_frame, next_params),
            "flow": batch["flow"],
            "relative_pose": batch["relative_pose"],
            "flow_is_ground_truth": batch.get("flow_is_ground_truth"),
        }
        if "boxes" in batch:
            extras["boxes"] = [apply_params_to_boxes(batch["boxes"].float(), p) for p in params]
            extras["box_labels"] = batch.get("box_labels")
        return Views(
            images=[], points=[*images, next_view], params=[*params, next_params], labels=None, extras=extras
        )


@VIEW_MAKERS.register("lidar_pair", PointAugmentConfig)
def build_lidar_pair_view_maker(config, spec: ViewSpec) -> LidarPairViewMaker:
    """From the whole Config: the ranges are ``config.data.point_augment`` (defaults when absent)."""
    return LidarPairViewMaker(getattr(config.data, "point_augment", None) or PointAugmentConfig(), spec)
