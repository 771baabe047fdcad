"""The simulated spinning LiDAR.

``beams`` lasers at the elevations of ``elevation_table`` (degrees; default uniform over
``elevation_range``), ``azimuth_steps`` firings per turn, returns between ``min_range`` and
``max_range`` metres, Gaussian range noise of std ``range_noise`` metres along the ray, each return lost
with probability ``dropout``; reflectance = material reflectivity x |cos(incidence)| ** 0.5, attenuated
with range, in [0, 1]. A sweep is taken at one instant (no rolling shutter). Mounted ``sensor_height``
metres above the ground, x forward, y left, z up (KITTI's velodyne frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from equissl.datasets.open3d_extra import open3d

if TYPE_CHECKING:  # annotations only: open3d is imported on first use (open3d_extra)
    import open3d as o3d
from equissl.datasets.lidar_sim.meshes import ACTOR_SEMANTIC, SEMANTIC, MeshParts
from equissl.datasets.lidar_sim.scene import Scene

if TYPE_CHECKING:  # the config lives in the package's __init__, which imports this module
    from equissl.datasets.lidar_sim import LidarSimConfig


def elevation_table(cfg: LidarSimConfig) -> np.ndarray:
    """Beam elevations in radians, lowest first."""
    if cfg.elevation_table:
        return np.radians(np.sort(np.asarray(cfg.elevation_table, dtype=np.float64)))
    low, high = cfg.elevation_range
    return np.radians(np.linspace(low, high, cfg.beams))


def beam_directions(cfg: LidarSimConfig) -> np.ndarray:
    """(azimuth_steps * beams, 3) unit directions in the sensor frame, azimuth-major (one column of beams
    per firing), azimuth from -pi (behind) counter-clockwise."""
    elevation = elevation_table(cfg)
    azimuth = -math.pi + 2 * math.pi * np.arange(cfg.azimuth_steps) / cfg.azimuth_steps
    az, el = np.meshgrid(azimuth, elevation, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)


@dataclass
class Sweep:
    """One simulated sweep (sensor frame of its time)."""

    points: np.ndarray  # (N, 4) float32 x, y, z, reflectance
    flow: np.ndarray  # (N, 3) float32, to the next sweep, in this sensor frame
    semantic: np.ndarray  # (N,) SemanticKITTI ids
    instance: np.ndarray  # (N,) track id + 1 on actors, 0 elsewhere
    actor: np.ndarray  # (N,) actor index, -1 on static surfaces
    sensor_pose: np.ndarray  # 4x4 sensor -> world
    boxes: np.ndarray  # (A, 7) every actor's box in the sensor frame
    box_points: np.ndarray  # (A,) returns on each actor


def _add_mesh(
    raycaster: o3d.t.geometry.RaycastingScene, parts: MeshParts, matrix: np.ndarray | None = None
) -> int:
    vertices = parts.vertices if matrix is None else parts.vertices @ matrix[:3, :3].T + matrix[:3, 3]
    return raycaster.add_triangles(vertices.astype(np.float32), parts.triangles.astype(np.uint32))


def scene_raycaster(
    scene: Scene, time: float, actors: list[int] | None = None, with_static: bool = True
) -> tuple[o3d.t.geometry.RaycastingScene, dict[int, int]]:
    """The world at ``time`` (static part and the chosen actors) -> (raycaster, geometry id -> actor index,
    -1 for the static part)."""
    o3d = open3d()
    raycaster = o3d.t.geometry.RaycastingScene()
    owner = {}
    if with_static:
        owner[_add_mesh(raycaster, scene.static)] = -1
    for index in range(len(scene.actors)) if actors is None else actors:
        owner[_add_mesh(raycaster, scene.actors[index].mesh, scene.actors[index].matrix(time))] = index
    return raycaster, owner


def simulate_sweep(scene: Scene, frame: int, cfg: LidarSimConfig, rng: np.random.Generator) -> Sweep:
    """Ray-cast sweep ``frame`` and compute each return's flow to frame + 1."""
    o3d = open3d()
    time, next_time = scene.times[frame], scene.times[frame + 1]
    sensor = scene.ego.matrix(time, cfg.sensor_height)
    directions = beam_directions(cfg)
    world_dirs = directions @ sensor[:3, :3].T
    rays = np.concatenate([np.broadcast_to(sensor[:3, 3], world_dirs.shape), world_dirs], axis=1).astype(
        np.float32
    )
    raycaster, owner = scene_raycaster(scene, time)
    hit = raycaster.cast_rays(o3d.core.Tensor(rays))
    distance = hit["t_hit"].numpy().astype(np.float64)
    geometry = hit["geometry_ids"].numpy().astype(np.int64)
    primitive = hit["primitive_ids"].numpy().astype(np.int64)
    normals = hit["primitive_normals"].numpy().astype(np.float64)
    noisy = distance + rng.normal(0.0, cfg.range_noise, distance.shape)
    lost = rng.random(distance.shape) < cfg.dropout
    keep = np.isfinite(distance) & (noisy >= cfg.min_range) & (noisy <= cfg.max_range) & ~lost
    distance, geometry, primitive, normals, noisy = (
        a[keep] for a in (distance, geometry, primitive, normals, noisy)
    )
    directions, world_dirs = directions[keep], world_dirs[keep]
    actor = (
        np.array([owner[int(g)] for g in geometry], dtype=np.int64)
        if len(geometry)
        else np.zeros(0, np.int64)
    )

    semantic = np.zeros(len(actor), np.int64)
    reflectivity = np.zeros(len(actor), np.float64)
    static = actor < 0
    semantic[static] = scene.static.semantic[primitive[static]]
    reflectivity[static] = scene.static.reflectivity[primitive[static]]
    flow_world = np.zeros((len(actor), 3))
    world_points = sensor[:3, 3] + world_dirs * noisy[:, None]
    for index in np.unique(actor[~static]):
        a = scene.actors[index]
        mask = actor == index
        semantic[mask] = SEMANTIC[ACTOR_SEMANTIC[a.class_name][int(a.moving)]]
        reflectivity[mask] = a.mesh.reflectivity[primitive[mask]]
        motion = a.matrix(next_time) @ np.linalg.inv(a.matrix(time))  # world at t -> world at t+1, rigidly
        flow_world[mask] = world_points[mask] @ motion[:3, :3].T + motion[:3, 3] - world_points[mask]
    cos_incidence = np.abs(np.sum(normals * world_dirs, axis=1))
    intensity = reflectivity * np.sqrt(cos_incidence) * np.exp(-noisy / 150.0)
    intensity = np.clip(intensity + rng.normal(0, 0.01, intensity.shape), 0, 1)
    points = np.concatenate([directions * noisy[:, None], intensity[:, None]], axis=1).astype(np.float32)
    flow = (flow_world @ sensor[:3, :3]).astype(np.float32)  # world vectors -> sensor frame (R^T v)
    instance = np.where(static, 0, actor + 1)

    to_sensor = np.linalg.inv(sensor)
    boxes, counts = [], []
    for index, a in enumerate(scene.actors):
        pose = to_sensor @ a.matrix(time)
        heading = math.atan2(pose[1, 0], pose[0, 0])
        boxes.append([*pose[:3, 3], *a.size, heading])
        counts.append(int((actor == index).sum()))
    return Sweep(
        points,
        flow,
        semantic,
        instance,
        actor,
        sensor,
        np.asarray(boxes, np.float64).reshape(-1, 7),
        np.asarray(counts, np.int64),
    )
