"""The shapes3d object catalogue: 13 procedural classes composed from open3d primitives.

Each class is a function of a numpy generator returning coloured parts (seeded per-instance proportions
and colours); :func:`build_object` merges them into one :class:`Mesh` in canonical pose (z up), centred on
its bounding box and scaled to the bounding-sphere radius ``OBJECT_RADIUS``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from equissl.datasets.open3d_extra import open3d

if TYPE_CHECKING:  # annotations only: open3d is imported on first use (open3d_extra)
    import open3d as o3d

OBJECT_RADIUS = 0.75  # bounding-sphere radius after normalisation: never touches the floor, fits the view


@dataclass
class Mesh:
    """A triangle mesh with per-triangle albedo, in its canonical pose (z up), centred and normalised.

    vertices (N, 3) float64; triangles (M, 3) int64; albedo (M, 3) sRGB in [0, 1];
    corner_normals (M, 3, 3) unit shading normals at each triangle corner (smooth within a crease angle).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    albedo: np.ndarray
    corner_normals: np.ndarray


@dataclass
class _Part:
    vertices: np.ndarray
    triangles: np.ndarray
    color: tuple[float, float, float]


_Z_TO = {  # rotations taking a primitive's +z axis to the named axis
    "z": Rotation.identity(),
    "-z": Rotation.from_euler("x", np.pi),
    "x": Rotation.from_euler("y", np.pi / 2),
    "y": Rotation.from_euler("x", -np.pi / 2),
}


def _part(
    mesh: o3d.geometry.TriangleMesh, color, center=(0, 0, 0), axis: str = "z", spin: float = 0.0
) -> _Part:
    """Place an open3d primitive: spin about its own z, turn z to ``axis``, translate to ``center``."""
    vertices = Rotation.from_euler("z", spin).apply(np.asarray(mesh.vertices))
    vertices = _Z_TO[axis].apply(vertices) + np.asarray(center, dtype=np.float64)
    return _Part(vertices, np.asarray(mesh.triangles, dtype=np.int64), tuple(color))


def _box(size, center, color, spin: float = 0.0) -> _Part:
    o3d = open3d()
    box = o3d.geometry.TriangleMesh.create_box(*size)
    box.translate(-np.asarray(size, dtype=np.float64) / 2)
    return _part(box, color, center, spin=spin)


def _cylinder(radius, height, center, color, axis="z", resolution=24) -> _Part:
    o3d = open3d()
    return _part(
        o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution, 1), color, center, axis
    )


def _cone(radius, height, base_center, color, axis="z", resolution=24) -> _Part:
    o3d = open3d()
    return _part(
        o3d.geometry.TriangleMesh.create_cone(radius, height, resolution, 1), color, base_center, axis
    )


def _sphere(radius, center, color, resolution=12) -> _Part:
    o3d = open3d()
    return _part(o3d.geometry.TriangleMesh.create_sphere(radius, resolution), color, center)


def _ellipsoid(radii, center, color) -> _Part:
    o3d = open3d()
    return _part(o3d.geometry.TriangleMesh.create_ellipsoid(*radii, resolution=12), color, center)


def _torus(radius, tube, center, color, axis="z") -> _Part:
    o3d = open3d()
    return _part(o3d.geometry.TriangleMesh.create_torus(radius, tube, 24, 10), color, center, axis)


def _prism(length, width, height, base_center, color) -> _Part:
    """Triangular prism along x (a 3-sided open3d cylinder), ridge up: a gable roof."""
    o3d = open3d()
    mesh = o3d.geometry.TriangleMesh.create_cylinder(1.0, length, 3, 1)
    v = np.asarray(mesh.vertices)  # triangle corners at (1, 0), (-1/2, +-sqrt(3)/2) in the xy plane
    ridge_up = np.stack([v[:, 2], v[:, 1] * width / np.sqrt(3), (v[:, 0] + 0.5) * height / 1.5], axis=1)
    return _Part(ridge_up + np.asarray(base_center), np.asarray(mesh.triangles, dtype=np.int64), tuple(color))


def _color(
    rng: np.random.Generator, hue=None, sat=(0.1, 0.85), val=(0.45, 0.95)
) -> tuple[float, float, float]:
    """A random sRGB colour; hue uniform unless given as a value or a (low, high) range."""
    if hue is None:
        hue = rng.uniform(0, 1)
    elif isinstance(hue, tuple):
        hue = rng.uniform(*hue) % 1.0
    return colorsys.hsv_to_rgb(hue, rng.uniform(*sat), rng.uniform(*val))


def _darker(color, factor: float = 0.35) -> tuple[float, float, float]:
    return tuple(factor * c for c in color)


def _mug(rng):
    radius, height = rng.uniform(0.28, 0.42), rng.uniform(0.55, 0.95)
    body = _color(rng)
    handle = body if rng.uniform() < 0.7 else _color(rng)
    return [
        _cylinder(radius, height, (0, 0, height / 2), body, resolution=32),
        _cylinder(0.88 * radius, 0.02, (0, 0, height), _darker(body, 0.25), resolution=32),
        _torus(rng.uniform(0.2, 0.3) * height, rng.uniform(0.04, 0.07), (radius, 0, height / 2), handle, "y"),
    ]


def _legs(rng, half_x, half_y, height, color, thickness, round_legs):
    parts = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            center = (sx * half_x, sy * half_y, height / 2)
            if round_legs:
                parts.append(_cylinder(thickness / 2, height, center, color, resolution=12))
            else:
                parts.append(_box((thickness, thickness, height), center, color))
    return parts


def _table(rng):
    width, depth = rng.uniform(1.0, 1.7), rng.uniform(0.55, 1.0)
    top, height = rng.uniform(0.05, 0.1), rng.uniform(0.55, 0.85)
    color = _color(rng)
    leg_color = color if rng.uniform() < 0.5 else _color(rng)
    inset, leg = rng.uniform(0.04, 0.12), rng.uniform(0.05, 0.1)
    return [_box((width, depth, top), (0, 0, height - top / 2), color)] + _legs(
        rng, width / 2 - inset, depth / 2 - inset, height - top, leg_color, leg, rng.uniform() < 0.5
    )


def _lamp(rng):
    base_radius, pole = rng.uniform(0.2, 0.32), rng.uniform(0.7, 1.1)
    metal, shade = _color(rng), _color(rng)
    shade_radius, shade_height = rng.uniform(0.25, 0.42), rng.uniform(0.25, 0.45)
    return [
        _cylinder(base_radius, 0.06, (0, 0, 0.03), metal),
        _cylinder(rng.uniform(0.02, 0.035), pole, (0, 0, pole / 2), metal, resolution=12),
        _cone(shade_radius, shade_height, (0, 0, pole - 0.6 * shade_height), shade),
        _sphere(0.07, (0, 0, pole - 0.62 * shade_height), colorsys.hsv_to_rgb(0.15, 0.3, 1.0)),
    ]


def _chair(rng):
    seat, seat_height, back = rng.uniform(0.45, 0.6), rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.75)
    color = _color(rng)
    leg_color = color if rng.uniform() < 0.5 else _color(rng)
    parts = [_box((seat, seat, 0.06), (0, 0, seat_height), color)]
    parts += _legs(
        rng, seat / 2 - 0.04, seat / 2 - 0.04, seat_height - 0.03, leg_color, 0.05, rng.uniform() < 0.4
    )
    parts.append(_box((seat, 0.05, back), (0, -seat / 2 + 0.025, seat_height + back / 2), color))
    if rng.uniform() < 0.35:  # armrests
        for sx in (-1, 1):
            parts.append(
                _box((0.05, 0.8 * seat, 0.05), (sx * (seat / 2 - 0.025), 0, seat_height + 0.22), leg_color)
            )
            parts.append(
                _box((0.04, 0.04, 0.22), (sx * (seat / 2 - 0.025), 0.3 * seat, seat_height + 0.11), leg_color)
            )
    return parts


def _rocket(rng):
    radius, length = rng.uniform(0.11, 0.17), rng.uniform(0.8, 1.2)
    body, accent = _color(rng), _color(rng)
    parts = [
        _cylinder(radius, length, (0, 0, length / 2), body),
        _cone(radius, rng.uniform(0.25, 0.45), (0, 0, length), accent),
        _cone(0.75 * radius, 0.2, (0, 0, -0.1), _darker(body, 0.4)),
        _sphere(0.45 * radius, (0, -0.8 * radius, 0.7 * length), (0.15, 0.2, 0.3)),
    ]
    fins, span, fin_height = int(rng.integers(3, 5)), rng.uniform(0.14, 0.24), rng.uniform(0.22, 0.35)
    for k in range(fins):
        angle = 2 * np.pi * k / fins
        center = (radius + span / 2 - 0.02) * np.array([np.cos(angle), np.sin(angle), 0.0]) + [
            0,
            0,
            fin_height / 2,
        ]
        parts.append(_box((span, 0.025, fin_height), center, accent, spin=angle))
    return parts


def _snowman(rng):
    r1 = rng.uniform(0.3, 0.38)
    r2, body = r1 * rng.uniform(0.65, 0.8), _color(rng, sat=(0.0, 0.25), val=(0.8, 1.0))
    r3 = r2 * rng.uniform(0.6, 0.78)
    z2, z3 = r1 + 0.8 * r2, r1 + 1.6 * r2 + 0.8 * r3
    parts = [_sphere(r, (0, 0, z), body, 16) for r, z in ((r1, r1), (r2, z2), (r3, z3))]
    parts.append(
        _cone(
            0.22 * r3, rng.uniform(0.6, 1.1) * r3, (0, 0.9 * r3, z3), _color(rng, (0.02, 0.12), (0.7, 1)), "y"
        )
    )
    for sx in (-1, 1):
        parts.append(_sphere(0.12 * r3, (sx * 0.35 * r3, 0.85 * r3, z3 + 0.3 * r3), (0.05, 0.05, 0.05), 6))
    if rng.uniform() < 0.6:
        hat = _color(rng, val=(0.05, 0.4))
        parts.append(_cylinder(1.1 * r3, 0.03, (0, 0, z3 + 0.8 * r3), hat))
        parts.append(_cylinder(0.7 * r3, 0.8 * r3, (0, 0, z3 + 1.2 * r3), hat))
    return parts


def _dumbbell(rng):
    bar, bar_radius = rng.uniform(0.9, 1.3), rng.uniform(0.03, 0.05)
    metal, weight = _color(rng, sat=(0.0, 0.2)), _color(rng)
    parts = [_cylinder(bar_radius, bar, (0, 0, 0), metal, "x", 12)]
    spherical, plates = rng.uniform() < 0.3, int(rng.integers(1, 4))
    radius, thickness = rng.uniform(0.18, 0.3), rng.uniform(0.06, 0.12)
    for sx in (-1, 1):
        if spherical:
            parts.append(_sphere(radius, (sx * (bar / 2 - 0.5 * radius), 0, 0), weight, 16))
            continue
        for k in range(plates):
            x = sx * (bar / 2 - 0.15 - (k + 0.5) * thickness)
            parts.append(_cylinder(radius * (1 - 0.2 * k), thickness, (x, 0, 0), weight, "x", 24))
    return parts


def _mushroom(rng):
    stem_radius, stem = rng.uniform(0.08, 0.16), rng.uniform(0.3, 0.6)
    cap_radius, cap_height = rng.uniform(0.3, 0.48), rng.uniform(0.14, 0.28)
    cap = _color(rng)
    parts = [
        _cylinder(
            stem_radius, stem, (0, 0, stem / 2), _color(rng, sat=(0.0, 0.3), val=(0.7, 1.0)), resolution=16
        ),
        _ellipsoid((cap_radius, cap_radius, cap_height), (0, 0, stem), cap),
    ]
    spot = _color(rng, sat=(0.0, 0.2), val=(0.85, 1.0))
    for _ in range(int(rng.integers(0, 7))):
        azimuth, polar = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.1)
        point = np.array(
            [
                cap_radius * np.sin(polar) * np.cos(azimuth),
                cap_radius * np.sin(polar) * np.sin(azimuth),
                stem + cap_height * np.cos(polar),
            ]
        )
        parts.append(_sphere(0.05, point, spot, 6))
    return parts


def _house(rng):
    width, depth, height = rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.7)
    wall, roof = _color(rng), _color(rng)
    parts = [
        _box((width, depth, height), (0, 0, height / 2), wall),
        _prism(width + 0.1, depth + 0.12, rng.uniform(0.3, 0.5), (0, 0, height), roof),
        _box(
            (0.16, 0.02, 0.3), (rng.uniform(-0.25, 0.25) * width, depth / 2 + 0.01, 0.15), _darker(wall, 0.3)
        ),
        _box((0.16, 0.02, 0.14), (-0.3 * width, depth / 2 + 0.01, 0.65 * height), (0.75, 0.85, 0.95)),
        _box((0.16, 0.02, 0.14), (0.3 * width, depth / 2 + 0.01, 0.65 * height), (0.75, 0.85, 0.95)),
    ]
    if rng.uniform() < 0.6:
        parts.append(_box((0.1, 0.1, 0.35), (0.3 * width, 0.15 * depth, height + 0.2), _darker(roof, 0.6)))
    return parts


def _truck(rng):
    width, cab, cargo = rng.uniform(0.45, 0.6), rng.uniform(0.3, 0.42), rng.uniform(0.7, 1.0)
    cab_height, cargo_height, wheel = rng.uniform(0.4, 0.5), rng.uniform(0.45, 0.65), rng.uniform(0.11, 0.15)
    cab_color, cargo_color = _color(rng), _color(rng)
    lift = wheel
    parts = [
        _box((cab, width, cab_height), (cab / 2, 0, lift + cab_height / 2), cab_color),
        _box((cargo, width, cargo_height), (-cargo / 2 - 0.03, 0, lift + cargo_height / 2), cargo_color),
        _box(
            (0.02, 0.8 * width, 0.4 * cab_height),
            (cab + 0.005, 0, lift + 0.7 * cab_height),
            (0.1, 0.12, 0.18),
        ),
    ]
    axles = [0.6 * cab, -0.25 * cargo, -0.8 * cargo][: int(rng.integers(2, 4))]
    for x in axles:
        for sy in (-1, 1):
            parts.append(
                _cylinder(wheel, 0.08, (x, sy * (width / 2 + 0.02), wheel), (0.08, 0.08, 0.08), "y", 16)
            )
    return parts


def _tree(rng):
    trunk, trunk_radius = rng.uniform(0.25, 0.45), rng.uniform(0.05, 0.09)
    crown = _color(rng, hue=(-0.05, 0.45), sat=(0.35, 0.85), val=(0.35, 0.8))
    parts = [
        _cylinder(trunk_radius, trunk, (0, 0, trunk / 2), _color(rng, (0.04, 0.1), (0.4, 0.7), (0.25, 0.5)))
    ]
    if rng.uniform() < 0.5:  # pine: stacked cones
        radius, z = rng.uniform(0.35, 0.5), trunk * 0.8
        for _ in range(int(rng.integers(2, 4))):
            parts.append(_cone(radius, radius * 1.2, (0, 0, z), crown))
            z, radius = z + radius * 0.6, radius * 0.75
    else:  # broadleaf: a cluster of spheres
        radius = rng.uniform(0.3, 0.42)
        parts.append(_sphere(radius, (0, 0, trunk + 0.8 * radius), crown, 16))
        for _ in range(int(rng.integers(0, 3))):
            offset = rng.normal(size=3) * np.array([0.25, 0.25, 0.1])
            parts.append(_sphere(0.7 * radius, np.array([0, 0, trunk + 0.9 * radius]) + offset, crown, 12))
    return parts


def _bottle(rng):
    radius, height = rng.uniform(0.14, 0.24), rng.uniform(0.5, 0.85)
    neck_radius, neck, shoulder = rng.uniform(0.045, 0.075), rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.2)
    glass = _color(rng)
    parts = [
        _cylinder(radius, height, (0, 0, height / 2), glass),
        _cone(radius, shoulder / (1 - neck_radius / radius), (0, 0, height), glass),
        _cylinder(neck_radius, neck, (0, 0, height + shoulder + neck / 2 - 0.02), glass, resolution=16),
        _cylinder(1.15 * neck_radius, 0.06, (0, 0, height + shoulder + neck), _color(rng), resolution=16),
    ]
    if rng.uniform() < 0.6:
        parts.append(_cylinder(1.02 * radius, 0.35 * height, (0, 0, 0.5 * height), _color(rng)))
    return parts


def _airplane(rng):
    length, body_radius = rng.uniform(0.6, 0.8), rng.uniform(0.07, 0.11)
    span, chord = rng.uniform(1.0, 1.5), rng.uniform(0.18, 0.3)
    body, wing = _color(rng), _color(rng)
    parts = [
        _ellipsoid((length, body_radius, body_radius), (0, 0, 0), body),
        _box((chord, span, 0.03), (0.1 * length, 0, -0.3 * body_radius), wing),
        _box((0.6 * chord, 0.4 * span, 0.025), (-0.85 * length, 0, 0), wing),
        _box((0.7 * chord, 0.025, rng.uniform(0.18, 0.28)), (-0.85 * length, 0, 0.12), wing),
    ]
    if rng.uniform() < 0.6:
        for sy in (-1, 1):
            parts.append(
                _cylinder(0.05, 0.22, (0.15 * length, sy * 0.25 * span, -0.1), _darker(body, 0.6), "x", 12)
            )
    return parts


_CLASSES: tuple[tuple[str, Callable[[np.random.Generator], list[_Part]]], ...] = (
    ("mug", _mug),
    ("table", _table),
    ("lamp", _lamp),
    ("chair", _chair),
    ("rocket", _rocket),
    ("snowman", _snowman),
    ("dumbbell", _dumbbell),
    ("mushroom", _mushroom),
    ("house", _house),
    ("truck", _truck),
    ("tree", _tree),
    ("bottle", _bottle),
    ("airplane", _airplane),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in _CLASSES)


def _corner_normals(vertices: np.ndarray, triangles: np.ndarray, crease_deg: float = 40.0) -> np.ndarray:
    """(M, 3, 3) normals averaging, at each corner, the adjacent faces within ``crease_deg`` of the face.

    Curved primitives shade smoothly while box edges and cylinder rims stay sharp.
    """
    weighted = np.cross(
        vertices[triangles[:, 1]] - vertices[triangles[:, 0]],
        vertices[triangles[:, 2]] - vertices[triangles[:, 0]],
    )  # length = 2 * area
    unit = weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)
    corner_vertex = triangles.ravel()
    corner_face = np.repeat(np.arange(len(triangles)), 3)
    order = np.argsort(corner_vertex, kind="stable")
    counts = np.bincount(corner_vertex, minlength=len(vertices))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # All (corner, neighbour corner) pairs sharing a vertex, in sorted-corner coordinates.
    size = counts[corner_vertex[order]]
    first = np.repeat(np.arange(len(order)), size)
    within = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    second = starts[corner_vertex[order]][first] + within
    face_a, face_b = corner_face[order][first], corner_face[order][second]
    keep = np.einsum("ij,ij->i", unit[face_a], unit[face_b]) > np.cos(np.deg2rad(crease_deg))
    normals = np.zeros((len(order), 3))
    for axis in range(3):
        normals[:, axis] = np.bincount(
            first[keep], weights=weighted[face_b[keep], axis], minlength=len(order)
        )
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    corner_normals = np.empty_like(normals)
    corner_normals[order] = normals
    return corner_normals.reshape(-1, 3, 3)


def mesh_from_parts(parts: list[_Part]) -> Mesh:
    """Merge parts, centre the bounding box at the origin and scale to radius ``OBJECT_RADIUS``."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    vertices = np.concatenate([p.vertices for p in parts])
    triangles = np.concatenate([p.triangles + offset for p, offset in zip(parts, offsets)])
    albedo = np.concatenate([np.tile(p.color, (len(p.triangles), 1)) for p in parts])
    vertices = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    vertices *= OBJECT_RADIUS / np.linalg.norm(vertices, axis=1).max()
    return Mesh(vertices, triangles, albedo.astype(np.float64), _corner_normals(vertices, triangles))


def build_object(class_index: int, rng: np.random.Generator) -> Mesh:
    """A random instance of class ``class_index`` (an index into ``CLASS_NAMES``), canonical pose."""
    return mesh_from_parts(_CLASSES[class_index][1](rng))
