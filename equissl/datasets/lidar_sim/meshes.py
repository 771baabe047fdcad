"""lidar_sim meshes: triangles labelled per face with a SemanticKITTI id and a reflectivity, and the
actors (cars, pedestrians, cyclists) composed from open3d primitives, each centred on its tight 3D box."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from equissl.datasets.open3d_extra import open3d

if TYPE_CHECKING:  # annotations only: open3d is imported on first use (open3d_extra)
    import open3d as o3d

# SemanticKITTI label ids (semantic-kitti.yaml).
SEMANTIC = {
    "car": 10,
    "bicyclist": 31,
    "person": 30,
    "road": 40,
    "parking": 44,
    "sidewalk": 48,
    "building": 50,
    "vegetation": 70,
    "trunk": 71,
    "terrain": 72,
    "pole": 80,
    "moving-car": 252,
    "moving-bicyclist": 253,
    "moving-person": 254,
}
ACTOR_SEMANTIC = {
    "Car": ("car", "moving-car"),
    "Pedestrian": ("person", "moving-person"),
    "Cyclist": ("bicyclist", "moving-bicyclist"),
}


@dataclass
class MeshParts:
    """Triangles with per-triangle SemanticKITTI id and reflectivity in [0, 1]."""

    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (T, 3) int64
    semantic: np.ndarray  # (T,) int64
    reflectivity: np.ndarray  # (T,) float32


class MeshBuilder:
    """Collects placed open3d primitives, each with one semantic label and reflectivity; ``build`` merges."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, int, float]] = []

    def add(
        self,
        mesh: o3d.geometry.TriangleMesh,
        semantic: str,
        reflectivity: float,
        center=(0.0, 0.0, 0.0),
        yaw: float = 0.0,
        axis: str = "z",
    ) -> None:
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        if axis == "y":  # primitive's +z turned to +y (wheels)
            vertices = vertices @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T
        elif axis == "x":
            vertices = vertices @ np.array([[0, 0, 1.0], [0, 1.0, 0], [-1.0, 0, 0]]).T
        cos, sin = math.cos(yaw), math.sin(yaw)
        vertices = vertices @ np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1.0]]).T + np.asarray(center)
        self.parts.append(
            (vertices, np.asarray(mesh.triangles, dtype=np.int64), SEMANTIC[semantic], reflectivity)
        )

    def box(self, size, center, semantic: str, reflectivity: float, yaw: float = 0.0) -> None:
        o3d = open3d()
        mesh = o3d.geometry.TriangleMesh.create_box(*size)
        mesh.translate(-np.asarray(size, dtype=np.float64) / 2)
        self.add(mesh, semantic, reflectivity, center, yaw)

    def cylinder(self, radius, height, center, semantic: str, reflectivity: float, axis: str = "z") -> None:
        o3d = open3d()
        self.add(
            o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=10, split=1),
            semantic,
            reflectivity,
            center,
            axis=axis,
        )

    def sphere(self, radius, center, semantic: str, reflectivity: float) -> None:
        o3d = open3d()
        self.add(
            o3d.geometry.TriangleMesh.create_sphere(radius, resolution=6), semantic, reflectivity, center
        )

    def torus(self, radius, tube, center, semantic: str, reflectivity: float) -> None:
        o3d = open3d()
        mesh = o3d.geometry.TriangleMesh.create_torus(
            radius, tube, radial_resolution=14, tubular_resolution=5
        )
        self.add(mesh, semantic, reflectivity, center, axis="y")

    def build(self) -> MeshParts:
        vertices, triangles, semantic, reflectivity, offset = [], [], [], [], 0
        for v, t, label, refl in self.parts:
            vertices.append(v)
            triangles.append(t + offset)
            semantic.append(np.full(len(t), label, np.int64))
            reflectivity.append(np.full(len(t), refl, np.float32))
            offset += len(v)
        return MeshParts(
            np.concatenate(vertices),
            np.concatenate(triangles),
            np.concatenate(semantic),
            np.concatenate(reflectivity),
        )


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
    b = MeshBuilder()
    body_h = 0.45 * height
    b.box((length, width, body_h), (0, 0, 0.15 + body_h / 2), "car", paint)
    cabin_h = height - 0.15 - body_h
    b.box(
        (0.5 * length, 0.88 * width, cabin_h), (-0.06 * length, 0, 0.15 + body_h + cabin_h / 2), "car", 0.08
    )
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.cylinder(
                wheel, 0.2, (sx * (length / 2 - 0.8), sy * (width / 2 - 0.1), wheel), "car", 0.05, axis="y"
            )
    return _centered(b.build())


def pedestrian_mesh(rng: np.random.Generator) -> tuple[MeshParts, np.ndarray]:
    """Legs mid-stride, torso, arms, head; facing +x."""
    height = rng.uniform(1.55, 1.9)
    cloth = float(rng.uniform(0.15, 0.6))
    stride = rng.uniform(0.05, 0.2)
    b = MeshBuilder()
    leg = 0.47 * height
    for sy, sx in ((-1, 1), (1, -1)):
        b.cylinder(0.075, leg, (sx * stride, sy * 0.1, leg / 2), "person", cloth)
    torso = 0.32 * height
    b.box((0.24, 0.4, torso), (0, 0, leg + torso / 2), "person", cloth)
    for sy in (-1, 1):
        b.cylinder(
            0.045, 0.3 * height, (-sy * stride * 0.5, sy * 0.25, leg + torso - 0.15 * height), "person", cloth
        )
    head = 0.1
    b.box(
        (0.06, 0.06, height - leg - torso - 2 * head),
        (0, 0, leg + torso + (height - leg - torso - 2 * head) / 2),
        "person",
        0.3,
    )
    b.sphere(head, (0, 0, height - head), "person", 0.35)
    return _centered(b.build())


def cyclist_mesh(rng: np.random.Generator) -> tuple[MeshParts, np.ndarray]:
    """Bicycle (two wheels, frame, handlebar) with a rider; x forward."""
    wheel = rng.uniform(0.3, 0.36)
    base = rng.uniform(1.0, 1.15)  # wheel base
    cloth = float(rng.uniform(0.2, 0.6))
    b = MeshBuilder()
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
