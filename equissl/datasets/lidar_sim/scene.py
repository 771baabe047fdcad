"""lidar_sim scenes and motion.

The scene: a straight road along world x (1 or 2 lanes per direction, a bike lane and a parking strip
on each side, curbs and sidewalks), buildings, poles and trees beside it; parked and driving cars, walking
and crossing pedestrians and cyclists (:mod:`~equissl.datasets.lidar_sim.meshes`), each moving rigidly by
a unicycle model; the ego drives in the right lane with a gentle lateral sway (so its heading changes too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from equissl.datasets.lidar_sim.meshes import ACTOR_BUILDERS, MeshBuilder, MeshParts
from equissl.datasets.open3d_extra import open3d

if TYPE_CHECKING:  # the config lives in the package's __init__, which imports this module
    from equissl.datasets.lidar_sim import LidarSimConfig

LANE_WIDTH, BIKE_LANE_WIDTH, PARKING_WIDTH, CURB_HEIGHT = 3.5, 1.5, 2.5, 0.15


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
            return (
                self.x + self.speed * math.cos(self.heading) * time,
                self.y + self.speed * math.sin(self.heading) * time,
                heading,
            )
        radius = self.speed / self.yaw_rate
        return (
            self.x + radius * (math.sin(heading) - math.sin(self.heading)),
            self.y - radius * (math.cos(heading) - math.cos(self.heading)),
            heading,
        )

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
    o3d = open3d()
    b = MeshBuilder()
    length = x_max - x_min
    center_x = (x_min + x_max) / 2
    road = o3d.geometry.TriangleMesh()
    road.vertices = o3d.utility.Vector3dVector(
        np.array(
            [[x_min, -half_road, 0], [x_max, -half_road, 0], [x_max, half_road, 0], [x_min, half_road, 0]]
        )
    )
    road.triangles = o3d.utility.Vector3iVector(np.array([[0, 1, 2], [0, 2, 3]]))
    b.add(road, "road", 0.18)
    for side in (-1, 1):
        walk = rng.uniform(2.5, 4.5)
        b.box(
            (length, walk, CURB_HEIGHT),
            (center_x, side * (half_road + walk / 2), CURB_HEIGHT / 2),
            "sidewalk",
            0.3,
        )
        terrain = 60.0
        b.box(
            (length, terrain, 0.05),
            (center_x, side * (half_road + walk + terrain / 2), 0.025),
            "terrain",
            0.25,
        )
        edge = half_road + walk
        x = x_min + rng.uniform(0, 10)
        while x < x_max:  # buildings with gaps
            depth, front, height = rng.uniform(8, 16), rng.uniform(8, 25), rng.uniform(4, 14)
            setback = rng.uniform(0.5, 6)
            b.box(
                (front, depth, height),
                (x + front / 2, side * (edge + setback + depth / 2), height / 2),
                "building",
                float(rng.uniform(0.25, 0.55)),
                yaw=float(rng.normal(0, 0.03)),
            )
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


def _spawn(
    rng: np.random.Generator,
    cfg: LidarSimConfig,
    ego: Ego,
    lanes: int,
    x_min: float,
    x_max: float,
    half_road: float,
) -> list[Actor]:
    """Actors placed so that vehicles never overlap within the drive: per lane one speed (+-0.3 m/s), 12 m
    spacing; the ego's lane keeps its start clear. (Crossing pedestrians may walk through traffic.)"""
    actors: list[Actor] = []
    duration = cfg.frames_per_sequence / cfg.frame_rate
    lane_centres = [-(k + 0.5) * LANE_WIDTH for k in range(lanes)] + [
        (k + 0.5) * LANE_WIDTH for k in range(lanes)
    ]
    lane_speed = {y: (ego.speed if abs(y - ego.y_lane) < 1e-6 else rng.uniform(4, 13)) for y in lane_centres}
    occupied: dict[float, list[float]] = {
        y: [0.0] if abs(y - ego.y_lane) < 1e-6 else [] for y in lane_centres
    }

    def free_x(key: float, spacing: float) -> float | None:
        for _ in range(20):
            x = rng.uniform(x_min + 5, x_max - 5)
            if all(abs(x - other) > spacing for other in occupied.setdefault(key, [])):
                occupied[key].append(x)
                return x
        return None

    def add(
        name: str,
        x: float,
        y: float,
        heading: float,
        speed: float,
        yaw_rate: float = 0.0,
        ground: float = 0.0,
    ) -> None:
        mesh, size = ACTOR_BUILDERS[name](rng)
        actors.append(Actor(name, len(actors), mesh, size, x, y, heading, speed, yaw_rate, ground))

    drive_half = lanes * LANE_WIDTH

    for _ in range(cfg.cars):
        if rng.random() < 0.4:  # parked, in a parking strip
            side = rng.choice([-1.0, 1.0])
            y = side * (drive_half + BIKE_LANE_WIDTH + PARKING_WIDTH / 2)
            x = free_x(y, 6.0)
            if x is not None:
                add(
                    "Car",
                    x,
                    y + rng.normal(0, 0.15),
                    (0.0 if side < 0 else math.pi) + rng.normal(0, 0.05),
                    0.0,
                )
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
            add(
                "Pedestrian",
                rng.uniform(x_min + 10, x_max - 10),
                side * (half_road + 1.0),
                -side * math.pi / 2 + rng.normal(0, 0.1),
                rng.uniform(0.8, 1.6),
            )
        else:
            y = side * (half_road + rng.uniform(1.0, 2.5))
            speed = 0.0 if kind > 0.8 else rng.uniform(0.8, 1.7)
            add(
                "Pedestrian",
                rng.uniform(x_min + 5, x_max - 5),
                y,
                float(rng.choice([0.0, math.pi])) + rng.normal(0, 0.1),
                speed,
                rng.normal(0, 0.15) if speed else 0.0,
                ground=CURB_HEIGHT,
            )
    for _ in range(cfg.cyclists):
        side = rng.choice([-1.0, 1.0])
        y = side * (drive_half + BIKE_LANE_WIDTH / 2)
        x = free_x(y, 8.0)
        if x is not None:
            add("Cyclist", x, y, 0.0 if side < 0 else math.pi, rng.uniform(3, 7), rng.normal(0, 0.03))
    # the ego's lane start was reserved at x = 0; keep its moving neighbours clear of it during the drive
    return [
        a
        for a in actors
        if not (
            a.speed and abs(a.y - ego.y_lane) < 1e-6 and abs(a.x) < 10 + abs(a.speed - ego.speed) * duration
        )
    ]


def build_scene(cfg: LidarSimConfig, rng: np.random.Generator) -> Scene:
    lanes = int(rng.integers(1, 3))
    half_road = lanes * LANE_WIDTH + BIKE_LANE_WIDTH + PARKING_WIDTH
    ego = Ego(
        y_lane=-(lanes - 0.5) * LANE_WIDTH if lanes > 1 else -0.5 * LANE_WIDTH,
        speed=float(rng.uniform(4, 11)),
        sway=float(rng.uniform(0, 0.6)),
        period=float(rng.uniform(3, 8)),
        phase=float(rng.uniform(0, 2 * math.pi)),
    )
    duration = cfg.frames_per_sequence / cfg.frame_rate
    x_min, x_max = -cfg.max_range - 10, ego.speed * duration + cfg.max_range + 10
    static = _static_scene(rng, x_min, x_max, half_road)
    actors = _spawn(rng, cfg, ego, lanes, x_min + 20, x_max - 20, half_road)
    return Scene(static, actors, ego, np.arange(cfg.frames_per_sequence + 1) / cfg.frame_rate)
