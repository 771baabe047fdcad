"""``lidar_sim``: simulated spinning-LiDAR drives with ground-truth scene flow, poses and 3D boxes,
ray-cast with open3d's ``RaycastingScene`` on the CPU and written in the KITTI / SemanticKITTI layout.

- :mod:`~equissl.datasets.lidar_sim.meshes`: labelled triangle meshes and the actors (cars, pedestrians,
  cyclists);
- :mod:`~equissl.datasets.lidar_sim.scene`: the road scene, the actors' and the ego's motion;
- :mod:`~equissl.datasets.lidar_sim.sensor`: the spinning LiDAR, one sweep with its ground-truth flow;
- :mod:`~equissl.datasets.lidar_sim.writer`: the KITTI / SemanticKITTI layout and :func:`render_lidar_sim`;
- here: the config, the default folder and the ``lidar_sim`` dataset factory, read as (t, t+1) sweep
  pairs (:class:`~equissl.datasets.lidar.LidarPairDataset`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from equissl.datasets.ie3d import data_root
from equissl.datasets.lidar import LidarDataConfig, LidarPairDataset, kitti_sequence
from equissl.datasets.lidar_sim import meshes, scene, sensor, writer
from equissl.datasets.lidar_sim.meshes import ACTOR_BUILDERS, SEMANTIC, MeshParts
from equissl.datasets.lidar_sim.scene import Actor, Ego, Scene, build_scene
from equissl.datasets.lidar_sim.sensor import (
    Sweep,
    beam_directions,
    elevation_table,
    scene_raycaster,
    simulate_sweep,
)
from equissl.datasets.lidar_sim.writer import (
    MARKER_NAME,
    SIMULATOR_VERSION,
    SPLITS_FILE,
    generation_params,
    is_complete,
    render_lidar_sim,
    sequence_names,
    sequence_rng,
    write_sequence,
)
from equissl.datasets.materialise import keyed_root
from equissl.errors import ConfigError
from equissl.registry import DATASETS

__all__ = [
    "ACTOR_BUILDERS",
    "MARKER_NAME",
    "SEMANTIC",
    "SIMULATOR_VERSION",
    "SPLITS_FILE",
    "Actor",
    "Ego",
    "LidarSimConfig",
    "MeshParts",
    "Scene",
    "Sweep",
    "beam_directions",
    "build_lidar_sim",
    "build_scene",
    "default_root",
    "elevation_table",
    "generation_params",
    "is_complete",
    "lidar_sim_dataset",
    "meshes",
    "render_lidar_sim",
    "scene",
    "scene_raycaster",
    "sensor",
    "sequence_names",
    "sequence_rng",
    "simulate_sweep",
    "write_sequence",
    "writer",
]


@dataclass
class LidarSimConfig(LidarDataConfig):
    """A CPU-sized default: 12 + 4 drives of 20 sweeps from a 32-beam sensor (about 20k points a sweep)."""

    name: str = "lidar_sim"
    num_sequences: int = 12  # training drives
    val_sequences: int = 4  # held-out drives (the val split)
    frames_per_sequence: int = 20
    frame_rate: float = 10.0  # Hz
    beams: int = 32
    elevation_range: tuple[float, float] = (-25.0, 3.0)  # degrees, lowest and highest beam
    elevation_table: tuple[float, ...] = ()  # degrees, one per beam; overrides beams / elevation_range
    azimuth_steps: int = 720  # 0.5 degree
    min_range: float = 1.5  # metres
    max_range: float = 50.0
    range_noise: float = 0.02  # metres, std along the ray
    dropout: float = 0.05  # probability that a return is lost
    sensor_height: float = 1.73  # metres above the ground
    cars: int = 16  # actors per drive (a share of them parked / standing)
    pedestrians: int = 10
    cyclists: int = 4
    seed: int = 0
    render_workers: int = 2  # processes; the output does not depend on it


def default_root(cfg: LidarSimConfig) -> Path:
    """Where ``cfg`` simulates to: ``data.root`` if set; else ``$EQUISSL_DATA/lidar_sim`` (or
    ``~/.cache/equissl/lidar_sim``) for the default generation parameters and ``lidar_sim-<hash>`` beside
    it for any other, so drives with other settings are kept apart instead of refused."""
    root = data_root(cfg)
    if cfg.root:
        return root
    return keyed_root(root, generation_params(cfg), generation_params(LidarSimConfig()))


def lidar_sim_dataset(root: str | Path, cfg: LidarSimConfig, split: str, seed: int) -> LidarPairDataset:
    """The (t, t+1) sweep pairs of the ``split`` drives of the simulation in ``root``."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    names = json.loads((Path(root) / SPLITS_FILE).read_text())[split]
    if not names:
        raise ConfigError(f"lidar_sim has no {split} sequences (data.val_sequences = 0?)")
    sequences = [kitti_sequence(root, name) for name in names]
    return LidarPairDataset(sequences, cfg.frame_gap, cfg.max_points, seed)


@DATASETS.register(
    "lidar_sim",
    LidarSimConfig,
    embedded=True,
    source="lidar_pair",
    description="embedded: simulated LiDAR drives with flow and boxes, in KITTI's layout",
)
def build_lidar_sim(
    cfg: LidarSimConfig, split: str, source: str, num_views: int, seed: int
) -> LidarPairDataset:
    """Simulate into :func:`default_root` on first use, then read it as (t, t+1) sweep pairs with
    ground-truth flow and boxes."""
    root = render_lidar_sim(default_root(cfg), cfg)
    return lidar_sim_dataset(root, cfg, split, seed)
