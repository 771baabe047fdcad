"""``lidar_sim``: simulated spinning-LiDAR drives with ground-truth scene flow, poses and 3D boxes,
ray-cast with open3d's ``RaycastingScene`` on the CPU and written in the KITTI / SemanticKITTI layout.

The sensor: ``beams`` lasers at the elevations of ``elevation_table`` (degrees; default uniform over
``elevation_range``), ``azimuth_steps`` firings per turn, returns between ``min_range`` and
``max_range`` metres, Gaussian range noise of std ``range_noise`` metres along the ray, each return lost
with probability ``dropout``; reflectance = material reflectivity x |cos(incidence)| ** 0.5, attenuated
with range, in [0, 1]. A sweep is taken at one instant (no rolling shutter). Mounted ``sensor_height``
metres above the ground, x forward, y left, z up (KITTI's velodyne frame).

The scene: a straight road along world x (1 or 2 lanes per direction, a bike lane and a parking strip
on each side, curbs and sidewalks), buildings, poles and trees beside it; parked and driving cars, walking and crossing
pedestrians and cyclists, each a mesh composed of open3d primitives whose 3D box is the mesh's tight
bounds; the ego drives in the right lane with a gentle lateral sway (so its heading changes too).

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
``lidar_sim.json`` (the marker, written last) holds the hash of the generation parameters; a folder
holding anything else, a simulation with other parameters included, is refused, never replaced.

Determinism: sequence k of split s is generated from ``numpy.random.default_rng([seed, s, k])`` alone,
so the output does not depend on the number of render workers or on the other sequences.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d as o3d

from equissl.datasets import materialise
from equissl.datasets.ie3d import data_root
from equissl.datasets.lidar import (
    CLASS_NAMES,
    LidarDataConfig,
    LidarPairDataset,
    kitti_sequence,
    write_boxes,
    write_calib,
    write_flow,
    write_kitti_poses,
    write_semantic_labels,
    write_velodyne,
)
from equissl.datasets.materialise import keyed_root
from equissl.registry import DATASETS

SIMULATOR_VERSION = 1  # bump when a change alters the written bytes: older renders are then refused, not read
MARKER_NAME = "lidar_sim.json"
SPLITS_FILE = "splits.json"

# SemanticKITTI label ids (semantic-kitti.yaml).
SEMANTIC = {"car": 10, "bicyclist": 31, "person": 30, "road": 40, "parking": 44, "sidewalk": 48, "building": 50,
            "vegetation": 70, "trunk": 71, "terrain": 72, "pole": 80,
            "moving-car": 252, "moving-bicyclist": 253, "moving-person": 254}
ACTOR_SEMANTIC = {"Car": ("car", "moving-car"), "Pedestrian": ("person", "moving-person"),
                  "Cyclist": ("bicyclist", "moving-bicyclist")}
# KITTI's velodyne -> camera 0 axes (x right, y down, z forward) and lever arm, as in its calib.txt files.
VELO_TO_CAM = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27], [0, 0, 0, 1.0]])
LANE_WIDTH, BIKE_LANE_WIDTH, PARKING_WIDTH, CURB_HEIGHT = 3.5, 1.5, 2.5, 0.15


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


# ----------------------------------------------------------------------------------------------------
# Meshes.


@dataclass
class MeshParts:
    """Triangles with per-triangle SemanticKITTI id and reflectivity in [0, 1]."""

    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (T, 3) int64
    semantic: np.ndarray  # (T,) int64
    reflectivity: np.ndarray  # (T,) float32


class _MeshBuilder:
    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, int, float]] = []

    def add(self, mesh: o3d.geometry.TriangleMesh, semantic: str, reflectivity: float,
            center=(0.0, 0.0, 0.0), yaw: float = 0.0, axis: str = "z") -> None:
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        if axis == "y":  # primitive's +z turned to +y (wheels)
            vertices = vertices @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T
        elif axis == "x":
            vertices = vertices @ np.array([[0, 0, 1.0], [0, 1.0, 0], [-1.0, 0, 0]]).T
        cos, sin = math.cos(yaw), math.sin(yaw)
        vertices = vertices @ np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1.0]]).T + np.asarray(center)
        self.parts.append((vertices, np.asarray(mesh.triangles, dtype=np.int64), SEMANTIC[semantic], reflectivity))

    def box(self, size, center, semantic: str, reflectivity: float, yaw: float = 0.0) -> None:
        mesh = o3d.geometry.TriangleMesh.create_box(*size)
        mesh.translate(-np.asarray(size, dtype=np.float64) / 2)
        self.add(mesh, semantic, reflectivity, center, yaw)

    def cylinder(self, radius, height, center, semantic: str, reflectivity: float, axis: str = "z") -> None:
        self.add(o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=10, split=1), semantic,
                 reflectivity, center, axis=axis)

    def sphere(self, radius, center, semantic: str, reflectivity: float) -> None:
        self.add(o3d.geometry.TriangleMesh.create_sphere(radius, resolution=6), semantic, reflectivity, center)

    def torus(self, radius, tube, center, semantic: str, reflectivity: float) -> None:
        mesh = o3d.geometry.TriangleMesh.create_torus(radius, tube, radial_resolution=14, tubular_resolution=5)
        self.add(mesh, semantic, reflectivity, center, axis="y")

    def build(self) -> MeshParts:
        vertices, triangles, semantic, reflectivity, offset = [], [], [], [], 0
        for v, t, label, refl in self.parts:
            vertices.append(v)
            triangles.append(t + offset)
            semantic.append(np.full(len(t), label, np.int64))
            reflectivity.append(np.full(len(t), refl, np.float32))
            offset += len(v)
        return MeshParts(np.concatenate(vertices), np.concatenate(triangles), np.concatenate(semantic),
                         np.concatenate(reflectivity))


def _centered(parts: MeshParts) -> tuple[MeshParts, np.ndarray]:
    """Move the mesh so that its tight bounds are centred at the origin; returns it and (l, w, h)."""
    low, high = parts.vertices.min(0), parts.vertices.max(0)
    moved = MeshParts(parts.vertices - (low + high) / 2, parts.triangles, parts.semantic, parts.reflectivity)
    return moved, high - low


def car_mesh(rng: np.random.Generator) -> tuple[MeshParts, np.ndarray]:
    """Body, cabin with darker glass, four wheels; x forward, centred on its box; returns (mesh, size)."""
    length, width, height = rng.uniform(3.6, 4.8), rng.uniform(1.6, 1.9), rng.uniform(1.4, 1.7)
    paint = float(rng.uniform(0.15, 0.9))
    wheel = 0.2 * height
    b = _MeshBuilder()
    body_h = 0.45 * height
    b.box((length, width, body_h), (0, 0, 0.15 + body_h / 2), "car", paint)
    cabin_h = height - 0.15 - body_h
    b.box((0.5 * length, 0.88 * width, cabin_h), (-0.06 * length, 0, 0.15 + body_h + cabin_h / 2), "car", 0.08)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.cylinder(wheel, 0.2, (sx * (length / 2 - 0.8), sy * (width / 2 - 0.1), wheel), "car", 0.05, axis="y")
    return _centered(b.build())


def pedestrian_mesh(rng: np.random.Generator) -> tuple[MeshParts, np.ndarray]:
    """Legs mid-stride, torso, arms, head; facing +x."""
    height = rng.uniform(1.55, 1.9)
    cloth = float(rng.uniform(0.15, 0.6))
    stride = rng.uniform(0.05, 0.2)
    b = _MeshBuilder()
    leg = 0.47 * height
    for sy, sx in ((-1, 1), (1, -1)):
        b.cylinder(0.075, leg, (sx * stride, sy * 0.1, leg / 2), "person", cloth)
    torso = 0.32 * height
    b.box((0.24, 0.4, torso), (0, 0, leg + torso / 2), "person", cloth)
    for sy in (-1, 1):
        b.cylinder(0.045, 0.3 * height, (-sy * stride * 0.5, sy * 0.25, leg + torso - 0.15 * height), "person", cloth)
    head = 0.1
    b.box((0.06, 0.06, height - leg - torso - 2 * head), (0, 0, leg + torso + (height - leg - torso - 2 * head) / 2),
          "person", 0.3)
    b.sphere(head, (0, 0, height - head), "person", 0.35)
    return _centered(b.build())


def cyclist_mesh(rng: np.random.Generator) -> tuple[MeshParts, np.ndarray]:
    """Bicycle (two wheels, frame, handlebar) with a rider; x forward."""
    wheel = rng.uniform(0.3, 0.36)
    base = rng.uniform(1.0, 1.15)  # wheel base
    cloth = float(rng.uniform(0.2, 0.6))
    b = _MeshBuilder()
    for sx in (-0.5, 0.5):
        b.torus(wheel, 0.03, (sx * base, 0, wheel), "bicyclist", 0.1)
    b.box((base, 0.05, 0.05), (0, 0, wheel + 0.15), "bicyclist", 0.5)
    b.box((0.05, 0.05, 0.5), (-0.1 * base, 0, wheel + 0.35), "bicyclist", 0.5)
    b.box((0.05, 0.5, 0.04), (0.45 * base, 0, wheel + 0.55), "bicyclist", 0.4)
    seat = wheel + 0.6
    for sy in (-1, 1):
        b.cylinder(0.06, 0.6, (0.05, sy * 0.12, seat - 0.3), "bicyclist", cloth)
    b.box((0.55, 0.36, 0.25), (0.1, 0, seat + 0.25), "bicyclist", cloth)  # leaning torso
    b.box((0.25, 0.36, 0.3), (0.3, 0, seat + 0.5), "bicyclist", cloth)
    b.sphere(0.11, (0.42, 0, seat + 0.78), "bicyclist", 0.35)
    return _centered(b.build())


ACTOR_BUILDERS = {"Car": car_mesh, "Pedestrian": pedestrian_mesh, "Cyclist": cyclist_mesh}


# ----------------------------------------------------------------------------------------------------
# Scenes and motion.


@dataclass
class Actor:
    """A rigid actor moving on the ground plane by a unicycle model (constant speed and yaw rate)."""

    class_name: str
    track_id: int
    mesh: MeshParts  # canonical: box centred at the origin, x forward
    size: np.ndarray  # (l, w, h) of its box
    x: float
    y: float
    heading: float
    speed: float  # m/s
    yaw_rate: float  # rad/s
    ground: float = 0.0  # height of the surface it stands on (sidewalks are raised by CURB_HEIGHT)

    @property
    def moving(self) -> bool:
        return self.speed > 0 or self.yaw_rate != 0

    def state(self, time: float) -> tuple[float, float, float]:
        """(x, y, heading) at ``time`` seconds."""
        heading = self.heading + self.yaw_rate * time
        if abs(self.yaw_rate) < 1e-9:
            return (self.x + self.speed * math.cos(self.heading) * time,
                    self.y + self.speed * math.sin(self.heading) * time, heading)
        radius = self.speed / self.yaw_rate
        return (self.x + radius * (math.sin(heading) - math.sin(self.heading)),
                self.y - radius * (math.cos(heading) - math.cos(self.heading)), heading)

    def matrix(self, time: float) -> np.ndarray:
        """4x4 canonical -> world at ``time`` (the box centre sits half its height above its ground)."""
        x, y, heading = self.state(time)
        return _pose(x, y, self.ground + self.size[2] / 2, heading)


def _pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    cos, sin = math.cos(yaw), math.sin(yaw)
    return np.array([[cos, -sin, 0, x], [sin, cos, 0, y], [0, 0, 1.0, z], [0, 0, 0, 1.0]])


@dataclass
class Ego:
    y_lane: float
    speed: float
    sway: float  # metres, amplitude of the lateral sway
    period: float  # seconds
    phase: float

    def matrix(self, time: float, height: float) -> np.ndarray:
        """4x4 sensor -> world."""
        omega = 2 * math.pi / self.period
        y = self.y_lane + self.sway * math.sin(omega * time + self.phase)
        dy = self.sway * omega * math.cos(omega * time + self.phase)
        return _pose(self.speed * time, y, height, math.atan2(dy, self.speed))


@dataclass
class Scene:
    static: MeshParts
    actors: list[Actor]
    ego: Ego
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _static_scene(rng: np.random.Generator, x_min: float, x_max: float, half_road: float) -> MeshParts:
    b = _MeshBuilder()
    length = x_max - x_min
    center_x = (x_min + x_max) / 2
    road = o3d.geometry.TriangleMesh()
    road.vertices = o3d.utility.Vector3dVector(np.array([[x_min, -half_road, 0], [x_max, -half_road, 0],
                                                         [x_max, half_road, 0], [x_min, half_road, 0]]))
    road.triangles = o3d.utility.Vector3iVector(np.array([[0, 1, 2], [0, 2, 3]]))
    b.add(road, "road", 0.18)
    for side in (-1, 1):
        walk = rng.uniform(2.5, 4.5)
        b.box((length, walk, CURB_HEIGHT), (center_x, side * (half_road + walk / 2), CURB_HEIGHT / 2), "sidewalk", 0.3)
        terrain = 60.0
        b.box((length, terrain, 0.05), (center_x, side * (half_road + walk + terrain / 2), 0.025), "terrain", 0.25)
        edge = half_road + walk
        x = x_min + rng.uniform(0, 10)
        while x < x_max:  # buildings with gaps
            depth, front, height = rng.uniform(8, 16), rng.uniform(8, 25), rng.uniform(4, 14)
            setback = rng.uniform(0.5, 6)
            b.box((front, depth, height), (x + front / 2, side * (edge + setback + depth / 2), height / 2),
                  "building", float(rng.uniform(0.25, 0.55)), yaw=float(rng.normal(0, 0.03)))
            x += front + rng.uniform(2, 12)
        x = x_min + rng.uniform(0, 15)
        while x < x_max:  # poles at the curb, trees on the sidewalk
            if rng.random() < 0.5:
                height = rng.uniform(4, 7)
                b.cylinder(0.1, height, (x, side * (half_road + 0.4), height / 2), "pole", 0.55)
            else:
                trunk = rng.uniform(1.5, 3)
                ty = side * (half_road + walk * rng.uniform(0.4, 0.8))
                b.cylinder(0.15, trunk, (x, ty, trunk / 2), "trunk", 0.3)
                b.sphere(rng.uniform(1.0, 2.0), (x, ty, trunk + 1.0), "vegetation", 0.35)
            x += rng.uniform(8, 20)
    return b.build()


def _spawn(rng: np.random.Generator, cfg: LidarSimConfig, ego: Ego, lanes: int, x_min: float, x_max: float,
           half_road: float) -> list[Actor]:
    """Actors placed so that vehicles never overlap within the drive: per lane one speed (+-0.3 m/s), 12 m
    spacing; the ego's lane keeps its start clear. (Crossing pedestrians may walk through traffic.)"""
    actors: list[Actor] = []
    duration = cfg.frames_per_sequence / cfg.frame_rate
    lane_centres = [-(k + 0.5) * LANE_WIDTH for k in range(lanes)] + [(k + 0.5) * LANE_WIDTH for k in range(lanes)]
    lane_speed = {y: (ego.speed if abs(y - ego.y_lane) < 1e-6 else rng.uniform(4, 13)) for y in lane_centres}
    occupied: dict[float, list[float]] = {y: [0.0] if abs(y - ego.y_lane) < 1e-6 else [] for y in lane_centres}

    def free_x(key: float, spacing: float) -> float | None:
        for _ in range(20):
            x = rng.uniform(x_min + 5, x_max - 5)
            if all(abs(x - other) > spacing for other in occupied.setdefault(key, [])):
                occupied[key].append(x)
                return x
        return None

    def add(name: str, x: float, y: float, heading: float, speed: float, yaw_rate: float = 0.0,
            ground: float = 0.0) -> None:
        mesh, size = ACTOR_BUILDERS[name](rng)
        actors.append(Actor(name, len(actors), mesh, size, x, y, heading, speed, yaw_rate, ground))

    drive_half = lanes * LANE_WIDTH

    for _ in range(cfg.cars):
        if rng.random() < 0.4:  # parked, in a parking strip
            side = rng.choice([-1.0, 1.0])
            y = side * (drive_half + BIKE_LANE_WIDTH + PARKING_WIDTH / 2)
            x = free_x(y, 6.0)
            if x is not None:
                add("Car", x, y + rng.normal(0, 0.15), (0.0 if side < 0 else math.pi) + rng.normal(0, 0.05), 0.0)
        else:
            y = float(rng.choice(lane_centres))
            x = free_x(y, 12.0)
            if x is not None:
                heading = 0.0 if y < 0 else math.pi
                add("Car", x, y, heading, lane_speed[y] + rng.uniform(-0.3, 0.3))
    for _ in range(cfg.pedestrians):
        side = rng.choice([-1.0, 1.0])
        kind = rng.random()
        if kind < 0.2:  # crossing the road
            add("Pedestrian", rng.uniform(x_min + 10, x_max - 10), side * (half_road + 1.0),
                -side * math.pi / 2 + rng.normal(0, 0.1), rng.uniform(0.8, 1.6))
        else:
            y = side * (half_road + rng.uniform(1.0, 2.5))
            speed = 0.0 if kind > 0.8 else rng.uniform(0.8, 1.7)
            add("Pedestrian", rng.uniform(x_min + 5, x_max - 5), y, float(rng.choice([0.0, math.pi])) + rng.normal(0, 0.1),
                speed, rng.normal(0, 0.15) if speed else 0.0, ground=CURB_HEIGHT)
    for _ in range(cfg.cyclists):
        side = rng.choice([-1.0, 1.0])
        y = side * (drive_half + BIKE_LANE_WIDTH / 2)
        x = free_x(y, 8.0)
        if x is not None:
            add("Cyclist", x, y, 0.0 if side < 0 else math.pi, rng.uniform(3, 7), rng.normal(0, 0.03))
    # the ego's lane start was reserved at x = 0; keep its moving neighbours clear of it during the drive
    return [a for a in actors if not (a.speed and abs(a.y - ego.y_lane) < 1e-6 and
                                      abs(a.x) < 10 + abs(a.speed - ego.speed) * duration)]


def build_scene(cfg: LidarSimConfig, rng: np.random.Generator) -> Scene:
    lanes = int(rng.integers(1, 3))
    half_road = lanes * LANE_WIDTH + BIKE_LANE_WIDTH + PARKING_WIDTH
    ego = Ego(y_lane=-(lanes - 0.5) * LANE_WIDTH if lanes > 1 else -0.5 * LANE_WIDTH,
              speed=float(rng.uniform(4, 11)), sway=float(rng.uniform(0, 0.6)), period=float(rng.uniform(3, 8)),
              phase=float(rng.uniform(0, 2 * math.pi)))
    duration = cfg.frames_per_sequence / cfg.frame_rate
    x_min, x_max = -cfg.max_range - 10, ego.speed * duration + cfg.max_range + 10
    static = _static_scene(rng, x_min, x_max, half_road)
    actors = _spawn(rng, cfg, ego, lanes, x_min + 20, x_max - 20, half_road)
    return Scene(static, actors, ego, np.arange(cfg.frames_per_sequence + 1) / cfg.frame_rate)


# ----------------------------------------------------------------------------------------------------
# The sensor.


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


def _add_mesh(raycaster: o3d.t.geometry.RaycastingScene, parts: MeshParts, matrix: np.ndarray | None = None) -> int:
    vertices = parts.vertices if matrix is None else parts.vertices @ matrix[:3, :3].T + matrix[:3, 3]
    return raycaster.add_triangles(vertices.astype(np.float32), parts.triangles.astype(np.uint32))


def scene_raycaster(scene: Scene, time: float, actors: list[int] | None = None,
                    with_static: bool = True) -> tuple[o3d.t.geometry.RaycastingScene, dict[int, int]]:
    """The world at ``time`` (static part and the chosen actors) -> (raycaster, geometry id -> actor index,
    -1 for the static part)."""
    raycaster = o3d.t.geometry.RaycastingScene()
    owner = {}
    if with_static:
        owner[_add_mesh(raycaster, scene.static)] = -1
    for index in range(len(scene.actors)) if actors is None else actors:
        owner[_add_mesh(raycaster, scene.actors[index].mesh, scene.actors[index].matrix(time))] = index
    return raycaster, owner


def simulate_sweep(scene: Scene, frame: int, cfg: LidarSimConfig, rng: np.random.Generator) -> Sweep:
    """Ray-cast sweep ``frame`` and compute each return's flow to frame + 1."""
    time, next_time = scene.times[frame], scene.times[frame + 1]
    sensor = scene.ego.matrix(time, cfg.sensor_height)
    directions = beam_directions(cfg)
    world_dirs = directions @ sensor[:3, :3].T
    rays = np.concatenate([np.broadcast_to(sensor[:3, 3], world_dirs.shape), world_dirs], axis=1).astype(np.float32)
    raycaster, owner = scene_raycaster(scene, time)
    hit = raycaster.cast_rays(o3d.core.Tensor(rays))
    distance = hit["t_hit"].numpy().astype(np.float64)
    geometry = hit["geometry_ids"].numpy().astype(np.int64)
    primitive = hit["primitive_ids"].numpy().astype(np.int64)
    normals = hit["primitive_normals"].numpy().astype(np.float64)
    noisy = distance + rng.normal(0.0, cfg.range_noise, distance.shape)
    lost = rng.random(distance.shape) < cfg.dropout
    keep = np.isfinite(distance) & (noisy >= cfg.min_range) & (noisy <= cfg.max_range) & ~lost
    distance, geometry, primitive, normals, noisy = (a[keep] for a in (distance, geometry, primitive, normals, noisy))
    directions, world_dirs = directions[keep], world_dirs[keep]
    actor = np.array([owner[int(g)] for g in geometry], dtype=np.int64) if len(geometry) else np.zeros(0, np.int64)

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
    return Sweep(points, flow, semantic, instance, actor, sensor, np.asarray(boxes, np.float64).reshape(-1, 7),
                 np.asarray(counts, np.int64))


# ----------------------------------------------------------------------------------------------------
# Writing the dataset.


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
        write_boxes(folder / "boxes" / f"{name}.txt", [a.class_name for a, n in zip(scene.actors, near) if n],
                    sweep.boxes[near], np.flatnonzero(near), sweep.box_points[near])
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
            raise ValueError(f"data.{key} must be >= {low}, got {getattr(cfg, key)}")
    if cfg.val_sequences < 0 or cfg.seed < 0 or not 0 <= cfg.dropout < 1 or cfg.range_noise < 0:
        raise ValueError("data.val_sequences and data.seed must be >= 0, data.dropout in [0, 1), range_noise >= 0")
    if not 0 < cfg.min_range < cfg.max_range or cfg.frame_rate <= 0:
        raise ValueError("data.min_range / max_range must satisfy 0 < min < max and data.frame_rate > 0")
    keys = ("num_sequences", "val_sequences", "frames_per_sequence", "frame_rate", "beams", "elevation_range",
            "elevation_table", "azimuth_steps", "min_range", "max_range", "range_noise", "dropout",
            "sensor_height", "cars", "pedestrians", "cyclists", "seed")
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
    tasks = [(str(tmp / "sequences" / name), cfg, split, k)
             for split in ("train", "val") for k, name in enumerate(names[split])]
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
    summary = {"sweeps": len(tasks) * cfg.frames_per_sequence, "points": int(sum(counts)),
               "seconds": round(time.perf_counter() - start, 2), "workers": workers}
    return {"summary": summary, "class_names": list(CLASS_NAMES)}


def render_lidar_sim(root: str | Path, cfg: LidarSimConfig, progress: bool = True) -> Path:
    """Simulate the dataset into ``root`` unless a complete render with the same generation parameters is
    there; returns ``root``. Only an absent or empty ``root`` is written to: one holding a render with other
    parameters, or any other non-empty folder, raises :class:`~equissl.errors.UserError` and is left
    untouched (see :mod:`equissl.datasets.materialise`)."""
    return materialise.materialise(root, MARKER_NAME, generation_params(cfg),
                                   lambda tmp: _write_tree(tmp, cfg, progress), "lidar_sim")


def default_root(cfg: LidarSimConfig) -> Path:
    """Where ``cfg`` simulates to: ``data.root`` if set; else ``$EQUISSL_DATA/lidar_sim`` (or
    ``~/.cache/equissl/lidar_sim``) for the default generation parameters and ``lidar_sim-<hash>`` beside
    it for any other, so drives with other settings are kept apart instead of refused."""
    root = data_root(cfg)
    if cfg.root:
        return root
    return keyed_root(root, generation_params(cfg), generation_params(LidarSimConfig()))


def lidar_sim_dataset(root: str | Path, cfg: LidarSimConfig, split: str, seed: int) -> LidarPairDataset:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    names = json.loads((Path(root) / SPLITS_FILE).read_text())[split]
    if not names:
        raise ValueError(f"lidar_sim has no {split} sequences (data.val_sequences = 0?)")
    sequences = [kitti_sequence(root, name) for name in names]
    return LidarPairDataset(sequences, cfg.frame_gap, cfg.max_points, seed)


@DATASETS.register("lidar_sim", LidarSimConfig)
def build_lidar_sim(cfg: LidarSimConfig, split: str, source: str, num_views: int, seed: int) -> LidarPairDataset:
    """Simulate into :func:`default_root` on first use, then read it as (t, t+1) sweep pairs with
    ground-truth flow and boxes."""
    root = render_lidar_sim(default_root(cfg), cfg)
    return lidar_sim_dataset(root, cfg, split, seed)
