"""Readers for LiDAR sequences in the KITTI family of layouts, and the consecutive-sweep pair dataset.

Layouts (``data.layout``):

``"kitti"`` -- KITTI odometry and SemanticKITTI::

    root/sequences/SS/velodyne/NNNNNN.bin   float32 (x, y, z, reflectance) rows, metres, velodyne frame
    root/sequences/SS/calib.txt             "P0: ..12 floats", ..., "Tr: ..12 floats" (velodyne -> camera 0)
    root/sequences/SS/poses.txt             SemanticKITTI: one 3x4 row-major camera-0 -> world pose per frame
    root/poses/SS.txt                       KITTI odometry devkit: the same, outside the sequence folder
    root/sequences/SS/labels/NNNNNN.label   SemanticKITTI: uint32 per point, semantic | instance << 16

  Poses are of camera 0; the velodyne pose is ``inv(Tr) @ P @ Tr`` (SemanticKITTI's convention; without
  ``calib.txt`` Tr is the identity, i.e. the poses are taken to be the velodyne's).

``"kitti360"`` -- KITTI-360::

    root/data_3d_raw/SEQ/velodyne_points/data/NNNNNNNNNN.bin     (10 digits; SEQ = 2013_05_28_drive_XXXX_sync)
    root/data_poses/SEQ/poses.txt                 "frame r11 .. t3": IMU/GPS -> world, for a subset of frames
    root/calibration/calib_cam_to_pose.txt        "image_00: 12 floats" (camera 0 -> IMU/GPS)
    root/calibration/calib_cam_to_velo.txt        12 floats (camera 0 -> velodyne)

  The velodyne pose is ``poses[frame] @ cam_to_pose @ inv(cam_to_velo)`` (kitti360Scripts'
  ``TrVeloToPose``); sweeps without a pose are left out.

Simulated sequences (:mod:`equissl.datasets.lidar_sim`) use the ``"kitti"`` layout plus
``flow/NNNNNN.bin`` (float32 (N, 3), per point of the sweep, see :class:`LidarPairDataset`) and
``boxes/NNNNNN.txt`` (``class x y z dx dy dz heading track_id num_points`` per line, velodyne frame,
OpenPCDet's box convention: centre, size along the box's x/y/z, heading about +z in radians).

Damaged data is skipped and counted in ``dataset.stats`` (per process; DataLoader workers keep their own):
empty (0-byte) or truncated (size not a multiple of 16) sweep files are dropped when the index is built,
and every pair that needs them; rows with a NaN or infinite value are removed when a sweep is read; a
sweep left with no point falls back, with a warning, to the next readable pair (counted in
``skipped_reads`` and named in ``bad_files``, which the trainer sums over workers and checks against
``data.max_bad_fraction``).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from equissl.augmentations.points import PointAugmentConfig
from equissl.config import DataConfig
from equissl.datasets.ie3d import data_root
from equissl.errors import ConfigError, UserError
from equissl.registry import DATASETS

CLASS_NAMES = ("Car", "Pedestrian", "Cyclist")  # OpenPCDet's KITTI classes: box label k is CLASS_NAMES[k]
POINT_BYTES = 16  # four float32 per point


# ----------------------------------------------------------------------------------------------------
# Files.


class UnreadableSweep(Exception):
    """A sweep file that cannot be used (empty, truncated, or without any finite point)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def write_velodyne(path: str | Path, points: np.ndarray) -> None:
    """(N, 4) x, y, z, reflectance -> KITTI ``.bin`` (row-major float32)."""
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 4:
        raise ValueError(f"velodyne points must be (N, 4), got {points.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    points.tofile(path)


def read_velodyne(path: str | Path) -> np.ndarray:
    """KITTI ``.bin`` -> (N, 4) float32, rows as stored (non-finite values included)."""
    size = Path(path).stat().st_size
    if size % POINT_BYTES:
        raise UnreadableSweep(
            path, f"{size} bytes is not a whole number of (x, y, z, reflectance) float32 rows"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def write_flow(path: str | Path, flow: np.ndarray) -> None:
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 2 or flow.shape[1] != 3:
        raise ValueError(f"flow must be (N, 3), got {flow.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    flow.tofile(path)


def read_flow(path: str | Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(-1, 3)


def _pose_rows(matrices: np.ndarray) -> np.ndarray:
    return np.asarray(matrices, dtype=np.float64)[:, :3, :4].reshape(-1, 12)


def _homogeneous(rows: np.ndarray) -> np.ndarray:
    matrices = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    matrices[:, :3, :4] = rows.reshape(-1, 3, 4)
    return matrices


def write_kitti_poses(path: str | Path, poses: np.ndarray) -> None:
    """(F, 4, 4) -> KITTI odometry poses file (12 numbers per line, 3x4 row-major)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, _pose_rows(poses), fmt="%.9e")


def read_kitti_poses(path: str | Path) -> np.ndarray:
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 12:
        raise ValueError(f"{path}: expected 12 numbers per line (3x4 pose), got {rows.shape[1]}")
    return _homogeneous(rows)


def write_calib(path: str | Path, velo_to_cam: np.ndarray) -> None:
    """A KITTI odometry ``calib.txt``: P0..P3 (KITTI's sequence-00 projections) and Tr (velodyne -> camera 0)."""
    projection = "7.188560e+02 0 6.071928e+02 0 0 7.188560e+02 1.852157e+02 0 0 0 1 0"
    lines = [f"P{k}: {projection}" for k in range(4)]
    lines.append(
        "Tr: " + " ".join(f"{v:.9e}" for v in np.asarray(velo_to_cam, dtype=np.float64)[:3, :4].ravel())
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def read_calib(path: str | Path) -> dict[str, np.ndarray]:
    """``KEY: numbers`` lines -> {KEY: 4x4 for 12 numbers, else the flat array}."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if ":" not in line:
            continue
        key, text = line.split(":", 1)
        numbers = np.array([float(v) for v in text.split()], dtype=np.float64)
        values[key.strip()] = _homogeneous(numbers[None])[0] if numbers.size == 12 else numbers
    return values


def read_semantic_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SemanticKITTI ``.label`` -> (semantic class id, instance id), uint16 each, one per point."""
    raw = np.fromfile(path, dtype=np.uint32)
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


def write_semantic_labels(path: str | Path, semantic: np.ndarray, instance: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    (np.asarray(semantic, np.uint32) | (np.asarray(instance, np.uint32) << 16)).astype(np.uint32).tofile(path)


def write_boxes(
    path: str | Path, names: list[str], boxes: np.ndarray, track_ids: np.ndarray, num_points: np.ndarray
) -> None:
    lines = [
        f"{name} " + " ".join(f"{v:.6f}" for v in box) + f" {int(track)} {int(count)}"
        for name, box, track, count in zip(names, np.asarray(boxes, np.float64), track_ids, num_points)
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(line + "\n" for line in lines))


def read_boxes(
    path: str | Path, class_names: tuple[str, ...] = CLASS_NAMES, min_points: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``boxes/NNNNNN.txt`` -> ((K, 7) float32 boxes, (K,) int64 labels indexing ``class_names``); boxes of
    other classes, and boxes with fewer than ``min_points`` returns (when the file has that column), are
    left out."""
    boxes, labels = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts or parts[0] not in class_names:
            continue
        if len(parts) >= 10 and int(parts[9]) < min_points:
            continue
        boxes.append([float(v) for v in parts[1:8]])
        labels.append(class_names.index(parts[0]))
    return np.asarray(boxes, np.float32).reshape(-1, 7), np.asarray(labels, np.int64)


def read_kitti360_poses(path: str | Path) -> dict[int, np.ndarray]:
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 13:
        raise ValueError(f"{path}: expected 'frame' + 12 numbers per line, got {rows.shape[1]} numbers")
    return {int(frame): pose for frame, pose in zip(rows[:, 0], _homogeneous(rows[:, 1:]))}


# ----------------------------------------------------------------------------------------------------
# Sequences.


@dataclass
class SweepSequence:
    """One drive: ``sweeps[i]`` was taken at ``poses[i]`` (4x4 velodyne -> world, float64)."""

    name: str
    sweeps: list[Path]
    poses: np.ndarray
    flows: list[Path] | None = None  # per sweep (simulated data only)
    boxes: list[Path] | None = None

    def __post_init__(self) -> None:
        if len(self.poses) != len(self.sweeps):
            raise ValueError(f"sequence {self.name}: {len(self.sweeps)} sweeps but {len(self.poses)} poses")


def _frame_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(
        (p for p in folder.glob(f"*{suffix}") if re.fullmatch(r"\d+", p.stem)), key=lambda p: int(p.stem)
    )


def kitti_sequence(root: str | Path, name: str) -> SweepSequence:
    """A KITTI odometry / SemanticKITTI sequence (see the module docstring)."""
    root = Path(root)
    folder = root / "sequences" / name
    sweeps = _frame_files(folder / "velodyne", ".bin")
    if not sweeps:
        raise UserError(f"no velodyne sweeps in {folder / 'velodyne'} (expected NNNNNN.bin files)")
    pose_file = next((p for p in (folder / "poses.txt", root / "poses" / f"{name}.txt") if p.is_file()), None)
    if pose_file is None:
        raise UserError(
            f"sequence {name}: no poses ({folder / 'poses.txt'} or {root / 'poses' / f'{name}.txt'})"
        )
    camera_poses = read_kitti_poses(pose_file)
    calib_file = folder / "calib.txt"
    tr = read_calib(calib_file).get("Tr", np.eye(4)) if calib_file.is_file() else np.eye(4)
    poses = np.linalg.inv(tr) @ camera_poses @ tr
    flows = boxes = None
    if (folder / "flow").is_dir():
        flows = [folder / "flow" / f"{p.stem}.bin" for p in sweeps]
    if (folder / "boxes").is_dir():
        boxes = [folder / "boxes" / f"{p.stem}.txt" for p in sweeps]
    return SweepSequence(name, sweeps, poses, flows, boxes)


def kitti360_sequence(root: str | Path, name: str) -> SweepSequence:
    """A KITTI-360 drive; sweeps without a pose are left out (see the module docstring)."""
    root = Path(root)
    sweeps = _frame_files(root / "data_3d_raw" / name / "velodyne_points" / "data", ".bin")
    if not sweeps:
        raise UserError(f"no sweeps in {root / 'data_3d_raw' / name / 'velodyne_points' / 'data'}")
    imu_poses = read_kitti360_poses(root / "data_poses" / name / "poses.txt")
    cam_to_pose = read_calib(root / "calibration" / "calib_cam_to_pose.txt")["image_00"]
    rows = np.loadtxt(root / "calibration" / "calib_cam_to_velo.txt", dtype=np.float64).reshape(1, 12)
    velo_to_pose = cam_to_pose @ np.linalg.inv(_homogeneous(rows)[0])
    kept = [p for p in sweeps if int(p.stem) in imu_poses]
    poses = np.stack([imu_poses[int(p.stem)] @ velo_to_pose for p in kept]) if kept else np.zeros((0, 4, 4))
    return SweepSequence(name, kept, poses)


# ----------------------------------------------------------------------------------------------------
# The pair dataset.


@dataclass
class LidarDataConfig(DataConfig):
    """Shared by the LiDAR datasets; ``image_size`` is unused."""

    name: str = "kitti_odometry"
    max_points: int = 30000  # per sweep; a seeded random subset (kept in scan order) above this
    frame_gap: int = 1  # pairs (t, t + frame_gap)
    point_augment: PointAugmentConfig = field(default_factory=PointAugmentConfig)


def _stats() -> dict[str, int]:
    return {
        "empty_sweeps": 0,
        "truncated_sweeps": 0,
        "pairs_skipped": 0,
        "nan_points": 0,
        "sweeps_empty_after_filtering": 0,
        "fallbacks": 0,
    }


class LidarPairDataset(Dataset):
    """Pairs of sweeps (t, t + gap) of each sequence, as tensors.

    Item: ``points`` float32 (N, 4) and ``points_next`` (M, 4) (x, y, z, reflectance, each in its own
    velodyne frame, finite rows only, at most ``max_points``); ``flow`` float32 (N, 3): where each frame-t
    point is at t+gap minus where it is at t, in frame-t coordinates (from the ``flow/`` files; zero --
    the static-world assumption -- when a sequence has none, with ``flow_is_ground_truth`` False);
    ``relative_pose`` float32 (4, 4) taking frame-t coordinates to frame-(t+gap) ones
    (``inv(pose[t+gap]) @ pose[t]``), so a point p of frame t is at ``relative_pose @ (p + flow)`` in
    frame t+gap; ``boxes`` (K, 7) / ``box_labels`` (K,) of frame t when the sequence has boxes (those
    with at least ``min_box_points`` returns);
    ``sequence`` / ``frame`` indices.
    """

    num_classes = 0  # unlabelled for pretraining: no online probe

    def __init__(
        self,
        sequences: list[SweepSequence],
        frame_gap: int = 1,
        max_points: int = 30000,
        seed: int = 0,
        class_names: tuple[str, ...] = CLASS_NAMES,
        min_box_points: int = 1,
    ) -> None:
        if frame_gap < 1 or max_points < 1:
            raise ValueError(f"frame_gap and max_points must be >= 1, got {frame_gap}, {max_points}")
        if frame_gap != 1 and any(s.flows is not None for s in sequences):
            raise ConfigError(
                "flow files give the motion to the next sweep: data.frame_gap must be 1 with them"
            )
        self.min_box_points = min_box_points
        self.sequences = sequences
        self.frame_gap = frame_gap
        self.max_points = max_points
        self.seed = seed
        self.epoch = 0
        self.class_names = class_names
        self.stats = _stats()
        self.skipped_reads = 0  # the trainer's fault accounting (equissl.launch.data) reads these two
        self.bad_files: list[str] = []
        self.pairs = self._index()
        if not self.pairs:
            raise ValueError(f"no usable sweep pairs in {len(sequences)} sequence(s) (stats: {self.stats})")

    def _index(self) -> list[tuple[int, int]]:
        pairs = []
        for s, sequence in enumerate(self.sequences):
            usable = []
            for path in sequence.sweeps:
                size = path.stat().st_size
                if size == 0:
                    self.stats["empty_sweeps"] += 1
                elif size % POINT_BYTES:
                    self.stats["truncated_sweeps"] += 1
                usable.append(size > 0 and size % POINT_BYTES == 0)
            for t in range(len(sequence.sweeps) - self.frame_gap):
                if usable[t] and usable[t + self.frame_gap]:
                    pairs.append((s, t))
                else:
                    self.stats["pairs_skipped"] += 1
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _finite(self, points: np.ndarray, path: Path) -> np.ndarray:
        keep = np.isfinite(points).all(axis=1)
        self.stats["nan_points"] += int((~keep).sum())
        if not keep.any():
            self.stats["sweeps_empty_after_filtering"] += 1
            raise UnreadableSweep(path, "no finite point")
        return keep

    def _subset(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if count <= self.max_points:
            return np.arange(count)
        return np.sort(rng.choice(count, self.max_points, replace=False))

    def _load(self, index: int) -> dict[str, Tensor]:
        s, t = self.pairs[index]
        sequence = self.sequences[s]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        raw = read_velodyne(sequence.sweeps[t])
        raw_next = read_velodyne(sequence.sweeps[t + self.frame_gap])
        keep, keep_next = (
            self._finite(raw, sequence.sweeps[t]),
            self._finite(raw_next, sequence.sweeps[t + self.frame_gap]),
        )
        if sequence.flows is not None:
            flow = read_flow(sequence.flows[t])
            if len(flow) != len(raw):
                raise UnreadableSweep(sequence.flows[t], f"{len(flow)} flow vectors for {len(raw)} points")
            keep &= np.isfinite(flow).all(axis=1)
            if not keep.any():
                raise UnreadableSweep(sequence.flows[t], "no finite flow on a finite point")
        else:
            flow = np.zeros((len(raw), 3), np.float32)
        points, flow, points_next = raw[keep], flow[keep], raw_next[keep_next]
        chosen, chosen_next = self._subset(len(points), rng), self._subset(len(points_next), rng)
        relative = np.linalg.inv(sequence.poses[t + self.frame_gap]) @ sequence.poses[t]
        item = {
            "points": torch.from_numpy(np.ascontiguousarray(points[chosen])),
            "points_next": torch.from_numpy(np.ascontiguousarray(points_next[chosen_next])),
            "flow": torch.from_numpy(np.ascontiguousarray(flow[chosen])),
            "relative_pose": torch.from_numpy(relative.astype(np.float32)),
            "flow_is_ground_truth": torch.tensor(sequence.flows is not None),
            "sequence": torch.tensor(s),
            "frame": torch.tensor(t),
        }
        if sequence.boxes is not None:
            boxes, labels = read_boxes(sequence.boxes[t], self.class_names, self.min_box_points)
            item["boxes"], item["box_labels"] = torch.from_numpy(boxes), torch.from_numpy(labels)
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        for attempt in range(len(self.pairs)):
            candidate = (index + attempt) % len(self.pairs)
            try:
                return self._load(candidate)
            except (UnreadableSweep, OSError, ValueError) as error:
                self.stats["fallbacks"] += 1
                self.skipped_reads += 1
                path = (
                    getattr(error, "path", None)
                    or getattr(error, "filename", None)
                    or self.describe_item(candidate)
                )
                if str(path) not in self.bad_files:
                    self.bad_files.append(str(path))
                warnings.warn(f"skipping sweep pair {candidate}: {error}", stacklevel=2)
        raise ValueError(f"no readable sweep pair among {len(self.pairs)} (stats: {self.stats})")

    def describe_item(self, index: int) -> str:
        """The two sweep files of pair ``index``, for error messages."""
        s, t = self.pairs[index]
        sweeps = self.sequences[s].sweeps
        return f"{sweeps[t]} and {sweeps[t + self.frame_gap]}"

    @staticmethod
    def collate_fn(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad to the longest cloud of the batch: points (B, N, 4) and flow (B, N, 3) with NaN rows, boxes
        (B, K, 7) with zeros and box_labels with -1; ``num_points`` / ``num_points_next`` (B,) hold the
        true counts."""

        def pad(key: str, fill: float) -> Tensor:
            tensors = [item[key] for item in items]
            out = tensors[0].new_full(
                (len(tensors), max(len(x) for x in tensors), *tensors[0].shape[1:]), fill
            )
            for i, x in enumerate(tensors):
                out[i, : len(x)] = x
            return out

        batch = {
            "points": pad("points", math.nan),
            "points_next": pad("points_next", math.nan),
            "flow": pad("flow", math.nan),
            "num_points": torch.tensor([len(item["points"]) for item in items]),
            "num_points_next": torch.tensor([len(item["points_next"]) for item in items]),
        }
        for key in ("relative_pose", "flow_is_ground_truth", "sequence", "frame"):
            batch[key] = torch.stack([item[key] for item in items])
        if all("boxes" in item for item in items):
            batch["boxes"] = pad("boxes", 0.0)
            batch["box_labels"] = pad("box_labels", -1)
        return batch


# ----------------------------------------------------------------------------------------------------
# Real data: KITTI odometry / SemanticKITTI / KITTI-360.


@dataclass
class KittiOdometryConfig(LidarDataConfig):
    name: str = "kitti_odometry"
    layout: Literal["kitti", "kitti360"] = "kitti"
    # SemanticKITTI's split of the 11 odometry sequences with poses; KITTI-360 names its drives
    # 2013_05_28_drive_XXXX_sync.
    train_sequences: tuple[str, ...] = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
    val_sequences: tuple[str, ...] = ("08",)


def load_sequences(root: str | Path, names: tuple[str, ...], layout: str) -> list[SweepSequence]:
    reader = kitti360_sequence if layout == "kitti360" else kitti_sequence
    return [reader(root, name) for name in names]


@DATASETS.register(
    "kitti_odometry", KittiOdometryConfig, description="KITTI odometry / SemanticKITTI / KITTI-360 sweeps"
)
def build_kitti_odometry(
    cfg: KittiOdometryConfig, split: str, source: str, num_views: int, seed: int
) -> LidarPairDataset:
    """Consecutive-sweep pairs of real KITTI odometry / SemanticKITTI / KITTI-360 drives, with flow from the
    static-world assumption (zero; the poses carry the ego motion)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = data_root(cfg)
    if not root.is_dir():
        raise ConfigError(
            f"KITTI data root {root} does not exist: set data.root to the folder holding "
            f"{'data_3d_raw/' if cfg.layout == 'kitti360' else 'sequences/'}"
        )
    names = cfg.train_sequences if split == "train" else cfg.val_sequences
    return LidarPairDataset(load_sequences(root, names, cfg.layout), cfg.frame_gap, cfg.max_points, seed)
