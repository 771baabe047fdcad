"""Writing lidar_sim in the KITTI / SemanticKITTI layout, through the shared materialiser.

Per sweep (files of sequence SS, frame NNNNNN):
- ``velodyne/NNNNNN.bin``: float32 (x, y, z, reflectance), metres, sensor frame;
- ``labels/NNNNNN.label``: SemanticKITTI uint32, semantic id | instance << 16 (instance = track id + 1
  on actors, 0 elsewhere; moving actors get SemanticKITTI's moving-* ids);
- ``flow/NNNNNN.bin``: float32 (N, 3), per point: its position at the next sweep minus its position now,
  both in this sweep's sensor frame (zero on static surfaces; the ego motion is in the poses);
- ``boxes/NNNNNN.txt``: ``class x y z dx dy dz heading track_id num_points`` per actor within
  ``max_range`` (sensor frame, OpenPCDet box convention; num_points = returns on it in this sweep);
- ``poses.txt`` (camera 0 -> world, relative to the first frame, KITTI style) with ``calib.txt`` (Tr =
  velodyne -> camera 0, KITTI's axis convention) and ``times.txt`` (seconds).
``splits.json`` names the train and val sequences (val = held-out drives with their own seeds);
``lidar_sim.json`` (the marker, written last by :mod:`equissl.datasets.materialise`) holds the hash of the
generation parameters; a folder holding anything else, a simulation with other parameters included, is
refused, never replaced.

Determinism: sequence k of split s is generated from ``numpy.random.default_rng([seed, s, k])`` alone,
so the output does not depend on the number of render workers or on the other sequences.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from equissl.datasets import materialise
from equissl.datasets.lidar import (
    CLASS_NAMES,
    write_boxes,
    write_calib,
    write_flow,
    write_kitti_poses,
    write_semantic_labels,
    write_velodyne,
)
from equissl.datasets.lidar_sim.scene import build_scene
from equissl.datasets.lidar_sim.sensor import simulate_sweep
from equissl.datasets.open3d_extra import open3d
from equissl.errors import ConfigError

if TYPE_CHECKING:  # the config lives in the package's __init__, which imports this module
    from equissl.datasets.lidar_sim import LidarSimConfig

SIMULATOR_VERSION = 1  # bump when a change alters the written bytes: older renders are then refused, not read
MARKER_NAME = "lidar_sim.json"
SPLITS_FILE = "splits.json"

# KITTI's velodyne -> camera 0 axes (x right, y down, z forward) and lever arm, as in its calib.txt files.
VELO_TO_CAM = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27], [0, 0, 0, 1.0]]
)


def sequence_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == "train" else 1, index])


def write_sequence(folder: str | Path, cfg: LidarSimConfig, split: str, index: int) -> int:
    """Simulate one drive into ``folder`` (KITTI layout, module docstring); returns its number of points."""
    folder = Path(folder)
    rng = sequence_rng(cfg.seed, split, index)
    scene = build_scene(cfg, rng)
    first = None
    velodyne_poses, total = [], 0
    for frame in range(cfg.frames_per_sequence):
        sweep = simulate_sweep(scene, frame, cfg, rng)
        first = sweep.sensor_pose if first is None else first
        velodyne_poses.append(np.linalg.inv(first) @ sweep.sensor_pose)
        name = f"{frame:06d}"
        write_velodyne(folder / "velodyne" / f"{name}.bin", sweep.points)
        write_flow(folder / "flow" / f"{name}.bin", sweep.flow)
        write_semantic_labels(folder / "labels" / f"{name}.label", sweep.semantic, sweep.instance)
        near = np.linalg.norm(sweep.boxes[:, :2], axis=1) <= cfg.max_range
        write_boxes(
            folder / "boxes" / f"{name}.txt",
            [a.class_name for a, n in zip(scene.actors, near) if n],
            sweep.boxes[near],
            np.flatnonzero(near),
            sweep.box_points[near],
        )
        total += len(sweep.points)
    camera_poses = VELO_TO_CAM @ np.stack(velodyne_poses) @ np.linalg.inv(VELO_TO_CAM)
    write_kitti_poses(folder / "poses.txt", camera_poses)
    write_calib(folder / "calib.txt", VELO_TO_CAM)
    np.savetxt(folder / "times.txt", scene.times[: cfg.frames_per_sequence], fmt="%.6e")
    return total


def _write_task(task: tuple) -> int:
    folder, cfg, split, index = task
    return write_sequence(folder, cfg, split, index)


def generation_params(cfg: LidarSimConfig) -> dict:
    """Everything the written bytes depend on (not the reader's max_points, nor the worker count)."""
    checks = {"num_sequences": 1, "frames_per_sequence": 2, "beams": 1, "azimuth_steps": 8}
    for key, low in checks.items():
        if getattr(cfg, key) < low:
            raise ConfigError(f"data.{key} must be >= {low}, got {getattr(cfg, key)}")
    if cfg.val_sequences < 0 or cfg.seed < 0 or not 0 <= cfg.dropout < 1 or cfg.range_noise < 0:
        raise ConfigError(
            "data.val_sequences and data.seed must be >= 0, data.dropout in [0, 1), range_noise >= 0"
        )
    if not 0 < cfg.min_range < cfg.max_range or cfg.frame_rate <= 0:
        raise ConfigError("data.min_range / max_range must satisfy 0 < min < max and data.frame_rate > 0")
    keys = (
        "num_sequences",
        "val_sequences",
        "frames_per_sequence",
        "frame_rate",
        "beams",
        "elevation_range",
        "elevation_table",
        "azimuth_steps",
        "min_range",
        "max_range",
        "range_noise",
        "dropout",
        "sensor_height",
        "cars",
        "pedestrians",
        "cyclists",
        "seed",
    )
    params = {key: getattr(cfg, key) for key in keys}
    params = json.loads(json.dumps(params))  # tuples -> lists
    params["simulator_version"] = SIMULATOR_VERSION
    return params


def sequence_names(cfg: LidarSimConfig) -> dict[str, list[str]]:
    train = [f"{k:02d}" for k in range(cfg.num_sequences)]
    val = [f"{cfg.num_sequences + k:02d}" for k in range(cfg.val_sequences)]
    return {"train": train, "val": val}


def is_complete(root: str | Path, cfg: LidarSimConfig) -> bool:
    """Whether ``root`` holds a finished simulation made with ``cfg``'s generation parameters."""
    return materialise.is_complete(root, MARKER_NAME, generation_params(cfg))


def _write_tree(tmp: Path, cfg: LidarSimConfig, progress: bool) -> dict:
    """Simulate every drive into the empty folder ``tmp`` and write the splits; returns the marker's extra
    fields (the materialiser writes the marker)."""
    import time

    from tqdm.auto import tqdm

    names = sequence_names(cfg)
    tasks = [
        (str(tmp / "sequences" / name), cfg, split, k)
        for split in ("train", "val")
        for k, name in enumerate(names[split])
    ]
    workers = max(1, min(cfg.render_workers, len(tasks), os.cpu_count() or 1))
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), desc="simulating lidar_sim drives", unit="drive", disable=not progress)
    if workers == 1:
        counts = []
        for task in tasks:
            counts.append(_write_task(task))
            bar.update()
    else:  # spawn: the parent may hold threads (torch, open3d) that a fork would copy mid-state
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            counts = []
            for count in pool.imap(_write_task, tasks, chunksize=1):
                counts.append(count)
                bar.update()
    bar.close()
    (tmp / SPLITS_FILE).write_text(json.dumps(names, indent=1) + "\n")
    summary = {
        "sweeps": len(tasks) * cfg.frames_per_sequence,
        "points": int(sum(counts)),
        "seconds": round(time.perf_counter() - start, 2),
        "workers": workers,
    }
    return {"summary": summary, "class_names": list(CLASS_NAMES)}


def render_lidar_sim(root: str | Path, cfg: LidarSimConfig, progress: bool = True) -> Path:
    """Simulate the dataset into ``root`` unless a complete render with the same generation parameters is
    there; returns ``root``. Only an absent or empty ``root`` is written to: one holding a render with other
    parameters, or any other non-empty folder, raises :class:`~equissl.errors.UserError` and is left
    untouched (see :mod:`equissl.datasets.materialise`)."""
    if not materialise.is_complete(root, MARKER_NAME, generation_params(cfg)):
        open3d()  # rendering needs the 3d extra: say so before any lock or folder is made
    return materialise.materialise(
        root, MARKER_NAME, generation_params(cfg), lambda tmp: _write_tree(tmp, cfg, progress), "lidar_sim"
    )
