"""``shapes3d``: a small procedural stand-in for 3DIEBench, rendered on the CPU and written in its format.

What 3DIEBench is (checked against facebookresearch/SIE: ``data/README.md``, ``data/main.py``,
``src/dataset.py``, ``eval_MRR_Hk.py``):

- Layout ``root/SYNSET/OBJ/image_k.jpg`` + ``latent_k.npy``, ``k = 0 .. views-1`` (50 views there).
  SYNSET is an 8-digit WordNet-style id, OBJ a 32-hex ShapeNet model id.
- A latent holds 7 numbers, in order: extrinsic x, y, z Euler angles (radians; Blender's ``XYZ``
  rotation mode, i.e. scipy's ``Rotation.from_euler("xyz", angles)``, which is how SIE reads them),
  floor hue in [0, 1], light theta in [0, pi/4], light phi in [0, 2 pi], light hue in [0, 1]. (The
  README says "9 values" but lists, and the generator writes, 7.) SIE's generator writes float64;
  every SIE reader casts to float32, which is what we write.
- Index files (kept in SIE's ``data/`` folder; we write them into the dataset root): ``train_images.npy``
  / ``val_images.npy`` are 1-D numpy unicode arrays of object paths written ``"/SYNSET/OBJ"`` (leading
  slash: SIE strips it with ``path[1:]`` or appends it to the root string); ``train_labels.npy`` /
  ``val_labels.npy`` hold one integer class label per entry. SIE's evaluation also reads
  ``all_latents_{split}.npy`` (every view's latent, object-major, shape (objects * views, 7)); we write
  those too.
- The scene: camera at distance 2.5, polar angle pi/4, azimuth pi/2, looking at the origin (Blender's
  default 50 mm lens on a 36 mm sensor: 39.6 degree field of view); the object centred on its bounding
  box at the origin; a floor plane at z = -1 coloured HSV (floor hue, 0.6, 0.6); a spot light at
  distance 4 in direction (theta, phi) coloured HSV (light hue, 1, 0.8) plus a white sun.

Where we differ, on purpose: 3DIEBench draws each Euler angle uniformly in [-pi/2, pi/2] (not uniform
on SO(3)); by default (``rotations: so3``) we draw rotations uniformly on SO(3) and store
``Rotation.as_euler("xyz")``, so x and z lie in [-pi, pi] and y in [-pi/2, pi/2]. ``rotations: 3diebench``
draws as 3DIEBench does (each angle uniform in [-pi/2, pi/2], stored as drawn): the object's up axis then
never points below the horizon, the distribution SIE, seq-JEPA and EquiCaps were measured on. Our light
is directional (from direction (theta, phi)) with a softer colour (saturation ``LIGHT_SATURATION``), plus
a white ambient and sky term; shading is Lambertian with ray-traced shadows. Objects are composed from
open3d primitives (``CLASS_NAMES``), with seeded per-instance proportions and colours; synset ids are
synthetic (``9xxxxxxx``, not WordNet) and ``class_names.json`` maps them to readable names.

``render_shapes3d(root, cfg)`` is idempotent: it renders into a temporary folder, writes the marker
``shapes3d.json`` (holding the hash of the generation parameters) last and renames the folder into
place, so a killed render never looks complete; a folder holding anything else, a render with other
parameters included, is refused, never replaced. Output is identical for any number of workers.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import open3d as o3d
from PIL import Image
from scipy.spatial.transform import Rotation

from equissl.config import DataConfig
from equissl.datasets import materialise
from equissl.datasets.ie3d import IE3DDataset, data_root
from equissl.datasets.materialise import keyed_root
from equissl.datasets.materialise import params_sha256 as params_hash  # noqa: F401 -- public name
from equissl.registry import DATASETS

RENDERER_VERSION = 1  # bump when a change alters the rendered bytes: older renders are then refused, not read
MARKER_NAME = "shapes3d.json"
CLASS_NAMES_FILE = "class_names.json"

# Scene constants, from 3DIEBench's generator (see module docstring).
CAMERA_DISTANCE = 2.5
CAMERA_POSITION = CAMERA_DISTANCE * np.array([0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
CAMERA_FOV = 2.0 * np.arctan(18.0 / 50.0)  # radians, full angle (square images)
FLOOR_HEIGHT = -1.0
OBJECT_RADIUS = 0.75  # bounding-sphere radius after normalisation: never touches the floor, fits the view
FLOOR_SATURATION, FLOOR_VALUE = 0.6, 0.6
LIGHT_SATURATION = 0.6
AMBIENT, SKY, KEY = 0.12, 0.35, 1.1  # linear-light weights of the three lighting terms
GAMMA = 2.2

LATENT_NAMES = ("euler_x", "euler_y", "euler_z", "floor_hue", "light_theta", "light_phi", "light_hue")
LATENT_RANGES = (  # closed bounds of each latent, in LATENT_NAMES order
    (-np.pi, np.pi),
    (-np.pi / 2, np.pi / 2),
    (-np.pi, np.pi),
    (0.0, 1.0),
    (0.0, np.pi / 4),
    (0.0, 2 * np.pi),
    (0.0, 1.0),
)


@dataclass
class Shapes3DConfig(DataConfig):
    """The generated dataset: ``num_classes * (objects_per_class + val_objects_per_class)`` objects, each
    rendered at ``views_per_object`` views of ``render_size`` pixels (then read at ``image_size``)."""

    name: str = "shapes3d"
    num_classes: int = 10  # the first num_classes of CLASS_NAMES
    objects_per_class: int = 30  # training objects per class
    val_objects_per_class: int = 10  # held-out objects per class (the val split)
    views_per_object: int = 20
    render_size: int = 64  # pixels, square
    supersample: int = 2  # rays per pixel side (anti-aliasing)
    seed: int = 0
    rotations: Literal["so3", "3diebench"] = "so3"  # pose distribution (module docstring)
    render_workers: int = 2  # processes; the output does not depend on it


# ----------------------------------------------------------------------------------------------------
# Meshes composed from open3d primitives.


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
    box = o3d.geometry.TriangleMesh.create_box(*size)
    box.translate(-np.asarray(size, dtype=np.float64) / 2)
    return _part(box, color, center, spin=spin)


def _cylinder(radius, height, center, color, axis="z", resolution=24) -> _Part:
    return _part(
        o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution, 1), color, center, axis
    )


def _cone(radius, height, base_center, color, axis="z", resolution=24) -> _Part:
    return _part(
        o3d.geometry.TriangleMesh.create_cone(radius, height, resolution, 1), color, base_center, axis
    )


def _sphere(radius, center, color, resolution=12) -> _Part:
    return _part(o3d.geometry.TriangleMesh.create_sphere(radius, resolution), color, center)


def _ellipsoid(radii, center, color) -> _Part:
    return _part(o3d.geometry.TriangleMesh.create_ellipsoid(*radii, resolution=12), color, center)


def _torus(radius, tube, center, color, axis="z") -> _Part:
    return _part(o3d.geometry.TriangleMesh.create_torus(radius, tube, 24, 10), color, center, axis)


def _prism(length, width, height, base_center, color) -> _Part:
    """Triangular prism along x (a 3-sided open3d cylinder), ridge up: a gable roof."""
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


def synset_id(class_index: int) -> str:
    """8-digit synset folder name of a class (synthetic, outside WordNet's 0xxxxxxx range)."""
    return f"{90000001 + class_index:08d}"


def object_id(class_index: int, number: int) -> str:
    """32-hex object folder name (ShapeNet style), fixed by class and instance number."""
    return hashlib.md5(f"shapes3d/{CLASS_NAMES[class_index]}/{number}".encode()).hexdigest()


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


# ----------------------------------------------------------------------------------------------------
# Rendering.


def _so3_euler(rng: np.random.Generator, count: int) -> np.ndarray:
    quats = rng.standard_normal((count, 4))  # a normalised Gaussian 4-vector is uniform on SO(3)
    return Rotation.from_quat(quats / np.linalg.norm(quats, axis=1, keepdims=True)).as_euler("xyz")


def _3diebench_euler(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(-np.pi / 2, np.pi / 2, (count, 3))


EULER_SAMPLERS = {"so3": _so3_euler, "3diebench": _3diebench_euler}  # data.rotations -> (count, 3) angles


def euler_sampler(rotations: str) -> Callable[[np.random.Generator, int], np.ndarray]:
    """The Euler-angle sampler of pose distribution ``rotations``; ValueError naming the key otherwise."""
    if rotations not in EULER_SAMPLERS:
        raise ValueError(f"data.rotations must be one of {sorted(EULER_SAMPLERS)}, got {rotations!r}")
    return EULER_SAMPLERS[rotations]


def sample_latents(rng: np.random.Generator, count: int, rotations: str = "so3") -> np.ndarray:
    """(count, 7) float32 latents (``LATENT_NAMES``): xyz Euler angles of a rotation uniform on SO(3)
    (``rotations="so3"``) or each uniform in [-pi/2, pi/2] (``"3diebench"``), the rest uniform in
    ``LATENT_RANGES``."""
    euler = euler_sampler(rotations)(rng, count)
    rest = np.stack(
        [
            rng.uniform(0, 1, count),
            rng.uniform(0, np.pi / 4, count),
            rng.uniform(0, 2 * np.pi, count),
            rng.uniform(0, 1, count),
        ],
        axis=1,
    )
    return np.concatenate([euler, rest], axis=1).astype(np.float32)


def camera_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, right, up) unit vectors of the camera looking at the origin with world z up."""
    forward = -CAMERA_POSITION / np.linalg.norm(CAMERA_POSITION)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return forward, right, np.cross(right, forward)


@functools.lru_cache(maxsize=4)
def camera_rays(size: int) -> np.ndarray:
    """(size, size, 6) float32 rays [origin, unit direction]; row 0 is the top of the image. Read-only."""
    forward, right, up = camera_basis()
    half = np.tan(CAMERA_FOV / 2)
    coords = ((np.arange(size) + 0.5) / size * 2 - 1) * half
    directions = forward + coords[None, :, None] * right - coords[:, None, None] * up
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(CAMERA_POSITION, directions.shape)
    rays = np.concatenate([origins, directions], axis=-1).astype(np.float32)
    rays.flags.writeable = False
    return rays


def light_direction(theta: float, phi: float) -> np.ndarray:
    """Unit vector from the scene towards the light (polar angle theta from +z, azimuth phi)."""
    return np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])


@dataclass(frozen=True)
class _PixelRays:
    """Per-image-size ray geometry, shared by all views: rays (N, 6) [origin, unit direction], their
    distance to the floor (inf where they miss it), the floor points, the squared norms of those points,
    the squared distance of each ray's line to the origin (where objects are centred), and each ray's
    pixel row and column."""

    rays: np.ndarray
    t_floor: np.ndarray
    floor_points: np.ndarray
    floor_sq_norms: np.ndarray
    line_sq_dist: np.ndarray
    rows: np.ndarray
    cols: np.ndarray


@functools.lru_cache(maxsize=4)
def _pixel_rays(side: int) -> _PixelRays:
    rays = camera_rays(side).reshape(-1, 6)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(rays[:, 5] < 0, (FLOOR_HEIGHT - rays[:, 2]) / rays[:, 5], np.inf).astype(
            np.float32
        )
    points = rays[:, :3] + np.where(np.isfinite(t_floor), t_floor, 0)[:, None] * rays[:, 3:]
    sq_norms = np.einsum("nd,nd->n", points, points)
    along = np.einsum("nd,nd->n", rays[:, :3], rays[:, 3:])
    line_sq_dist = np.einsum("nd,nd->n", rays[:, :3], rays[:, :3]) - along**2
    rows, cols = np.divmod(np.arange(side * side), side)
    for array in (t_floor, points, sq_norms, line_sq_dist, rows, cols):
        array.flags.writeable = False
    return _PixelRays(rays, t_floor, points, sq_norms, line_sq_dist, rows, cols)


def project_to_pixels(points: np.ndarray, side: int) -> np.ndarray:
    """(N, 2) continuous (row, col) of world points in a ``side``-pixel image, pixel centres at integers."""
    forward, right, up = camera_basis()
    relative = points - CAMERA_POSITION
    depth = relative @ forward
    scale = side / (2 * np.tan(CAMERA_FOV / 2))
    return (
        np.stack(
            [side / 2 - scale * (relative @ up) / depth, side / 2 + scale * (relative @ right) / depth],
            axis=1,
        )
        - 0.5
    )


def _in_box(rows: np.ndarray, cols: np.ndarray, corners: np.ndarray, margin: float) -> np.ndarray:
    low, high = corners.min(axis=0) - margin, corners.max(axis=0) + margin
    return (rows >= low[0]) & (rows <= high[0]) & (cols >= low[1]) & (cols <= high[1])


def _occluded(
    scene: o3d.t.geometry.RaycastingScene, points: np.ndarray, normals: np.ndarray, to_light: np.ndarray
) -> np.ndarray:
    """(N,) bool: whether the object blocks the light from each surface point (offset along its normal)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    origins = points + 1e-3 * normals
    rays = np.concatenate([origins, np.broadcast_to(to_light, origins.shape)], axis=1).astype(np.float32)
    return scene.test_occlusions(o3d.core.Tensor(rays), nthreads=1).numpy().astype(bool)


def render_view(
    mesh: Mesh, latent: np.ndarray, size: int, supersample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``mesh`` rotated by ``Rotation.from_euler("xyz", latent[:3])`` about its centre.

    latent: the 7 values of ``LATENT_NAMES``. Returns (size, size, 3) uint8 sRGB and the (size, size)
    boolean mask of pixels where the object covers at least half the ``supersample**2`` samples.
    """
    latent = np.asarray(latent, dtype=np.float64)
    rotation = Rotation.from_euler("xyz", latent[:3])
    vertices = rotation.apply(mesh.vertices)
    scene = o3d.t.geometry.RaycastingScene(nthreads=1)  # one thread: bit-identical results
    scene.add_triangles(
        o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(mesh.triangles.astype(np.uint32))
    )
    geometry = _pixel_rays(size * supersample)
    rays, t_floor = geometry.rays, geometry.t_floor
    radius = np.linalg.norm(vertices, axis=1).max() + 1e-3
    # Only rays through the object's screen bounding box and its bounding sphere can hit it.
    box = _in_box(geometry.rows, geometry.cols, project_to_pixels(vertices, size * supersample), 1.0)
    may_hit = np.flatnonzero(box & (geometry.line_sq_dist < radius**2))
    hits = scene.cast_rays(o3d.core.Tensor(rays[may_hit]), nthreads=1)
    t_object = np.full(len(rays), np.inf, dtype=np.float32)
    t_object[may_hit] = hits["t_hit"].numpy()
    on_object = t_object < t_floor  # a miss is inf, never below
    hit_rows = np.flatnonzero(on_object[may_hit])  # rows of ``hits`` in the order of on_object's pixels
    to_light = light_direction(latent[4], latent[5])
    light_rgb = np.array(colorsys.hsv_to_rgb(latent[6], LIGHT_SATURATION, 1.0)) ** GAMMA
    linear = np.empty((len(rays), 3), dtype=np.float32)

    # Object: interpolated corner normals, turned towards the camera (two-sided shading).
    prim = hits["primitive_ids"].numpy()[hit_rows].astype(np.int64)
    uv = hits["primitive_uvs"].numpy()[hit_rows].astype(np.float64)
    bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    normals = rotation.apply(np.einsum("nk,nkd->nd", bary, mesh.corner_normals[prim]))
    directions = rays[on_object, 3:].astype(np.float64)
    normals[np.einsum("nd,nd->n", normals, directions) > 0] *= -1
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points = rays[on_object, :3] + t_object[on_object, None].astype(np.float64) * directions
    lambert = np.clip(normals @ to_light, 0, None)
    facing_light = lambert > 0
    lambert[facing_light] *= ~_occluded(scene, points[facing_light], normals[facing_light], to_light)
    irradiance = AMBIENT + SKY * (0.5 + 0.5 * normals[:, 2:3]) + KEY * lambert[:, None] * light_rgb
    linear[on_object] = (mesh.albedo**GAMMA)[prim] * irradiance

    # Floor: only points whose ray to the light passes the object's bounding sphere, and that lie in the
    # bounding box of its vertices' shadows, can be shadowed.
    on_floor = ~on_object
    floor = geometry.floor_points[on_floor]
    shadowable = geometry.floor_sq_norms[on_floor] - (floor @ to_light) ** 2 < radius**2
    if to_light[2] > 1e-3:
        shadows = vertices[:, :2] - np.outer((vertices[:, 2] - FLOOR_HEIGHT) / to_light[2], to_light[:2])
        shadowable &= _in_box(floor[:, 0], floor[:, 1], shadows, 1e-3)
    candidates = np.flatnonzero(shadowable)
    lit = np.ones(len(floor))
    up = np.broadcast_to([0.0, 0.0, 1.0], (len(candidates), 3))
    lit[candidates] = ~_occluded(scene, floor[candidates], up, to_light)
    floor_albedo = np.array(colorsys.hsv_to_rgb(latent[3], FLOOR_SATURATION, FLOOR_VALUE)) ** GAMMA
    floor_irradiance = AMBIENT + SKY + KEY * max(to_light[2], 0.0) * lit[:, None] * light_rgb
    linear[on_floor] = floor_albedo * floor_irradiance

    samples = linear.reshape(size, supersample, size, supersample, 3)
    linear = sum(samples[:, i, :, j] for i in range(supersample) for j in range(supersample)) / supersample**2
    srgb = np.clip(linear, 0, 1) ** np.float32(1 / GAMMA)
    coverage = on_object.reshape(size, supersample, size, supersample).sum(axis=(1, 3))
    mask = coverage >= supersample**2 / 2
    return np.round(srgb * 255).astype(np.uint8), mask


# ----------------------------------------------------------------------------------------------------
# Writing the dataset.


def _object_rngs(seed: int, class_index: int, number: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for an object's shape and its views: any object can be rebuilt alone."""
    return (
        np.random.default_rng([seed, class_index, number, 0]),
        np.random.default_rng([seed, class_index, number, 1]),
    )


def object_mesh(seed: int, class_index: int, number: int) -> Mesh:
    """The canonical mesh of object ``number`` of class ``class_index`` in a render with ``seed``."""
    return build_object(class_index, _object_rngs(seed, class_index, number)[0])


def _render_object(task: tuple) -> np.ndarray:
    """Render and write one object's views; returns its (views, 7) latents. Runs in worker processes."""
    folder, seed, class_index, number, views, size, supersample, rotations = task
    shape_rng, view_rng = _object_rngs(seed, class_index, number)
    mesh = build_object(class_index, shape_rng)
    latents = sample_latents(view_rng, views, rotations)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, latent in enumerate(latents):
        rgb, _ = render_view(mesh, latent, size, supersample)
        Image.fromarray(rgb).save(folder / f"image_{k}.jpg", quality=95, subsampling=0)  # 4:4:4: small images
        np.save(folder / f"latent_{k}.npy", latent)
    return latents


def generation_params(cfg: Shapes3DConfig) -> dict:
    """Everything the rendered bytes depend on (not the reader's image_size, nor the worker count)."""
    if not 1 <= cfg.num_classes <= len(CLASS_NAMES):
        raise ValueError(f"data.num_classes must be in [1, {len(CLASS_NAMES)}], got {cfg.num_classes}")
    for key in ("objects_per_class", "views_per_object", "render_size", "supersample"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"data.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.val_objects_per_class < 0 or cfg.seed < 0:
        raise ValueError("data.val_objects_per_class and data.seed must be >= 0")
    euler_sampler(cfg.rotations)  # refuse an unknown pose distribution before any rendering
    # the pose distribution enters only when not the default, so existing so3 renders stay valid
    pose = {} if cfg.rotations == "so3" else {"rotations": cfg.rotations}
    return {
        "renderer_version": RENDERER_VERSION,
        "classes": list(CLASS_NAMES[: cfg.num_classes]),
        "objects_per_class": cfg.objects_per_class,
        "val_objects_per_class": cfg.val_objects_per_class,
        "views_per_object": cfg.views_per_object,
        "render_size": cfg.render_size,
        "supersample": cfg.supersample,
        "seed": cfg.seed,
        **pose,
    }


def is_complete(root: str | Path, cfg: Shapes3DConfig) -> bool:
    """Whether ``root`` holds a finished render made with ``cfg``'s generation parameters."""
    return materialise.is_complete(root, MARKER_NAME, generation_params(cfg))


def _write_tree(tmp: Path, cfg: Shapes3DConfig, progress: bool) -> dict:
    """Render every object into the empty folder ``tmp`` and write the index files; returns the marker's
    extra fields (the materialiser writes the marker)."""
    from tqdm.auto import tqdm

    per_class = cfg.objects_per_class + cfg.val_objects_per_class
    tasks, splits = [], []
    for class_index in range(cfg.num_classes):
        for number in range(per_class):
            folder = tmp / synset_id(class_index) / object_id(class_index, number)
            tasks.append(
                (
                    str(folder),
                    cfg.seed,
                    class_index,
                    number,
                    cfg.views_per_object,
                    cfg.render_size,
                    cfg.supersample,
                    cfg.rotations,
                )
            )
            splits.append(("train" if number < cfg.objects_per_class else "val", class_index, folder))
    workers = max(1, min(cfg.render_workers, len(tasks), os.cpu_count() or 1))
    bar = tqdm(total=len(tasks), desc="rendering shapes3d objects", unit="obj", disable=not progress)
    if workers == 1:
        latents = []
        for task in tasks:
            latents.append(_render_object(task))
            bar.update()
    else:  # spawn: the parent may hold threads (torch, open3d) that a fork would copy mid-state
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            latents = []
            for result in pool.imap(_render_object, tasks, chunksize=1):
                latents.append(result)
                bar.update()
    bar.close()

    for split in ("train", "val"):
        chosen = [i for i, (s, _, _) in enumerate(splits) if s == split]
        paths = np.array([f"/{splits[i][2].parent.name}/{splits[i][2].name}" for i in chosen], dtype=np.str_)
        labels = np.array([splits[i][1] for i in chosen], dtype=np.int64)
        np.save(tmp / f"{split}_images.npy", paths)
        np.save(tmp / f"{split}_labels.npy", labels)
        all_latents = np.concatenate([latents[i] for i in chosen]) if chosen else np.zeros((0, 7), np.float32)
        np.save(tmp / f"all_latents_{split}.npy", all_latents)
    names = {synset_id(k): CLASS_NAMES[k] for k in range(cfg.num_classes)}
    (tmp / CLASS_NAMES_FILE).write_text(json.dumps(names, indent=1) + "\n")
    return {"latent_names": list(LATENT_NAMES)}


def render_shapes3d(root: str | Path, cfg: Shapes3DConfig, progress: bool = True) -> Path:
    """Render the dataset into ``root`` in 3DIEBench's layout, unless a complete render with the same
    generation parameters is already there; returns ``root``.

    Only an absent or empty ``root`` is rendered into: one holding a render with other parameters, or
    any other non-empty folder, raises :class:`~equissl.errors.UserError` and is left untouched (see
    :mod:`equissl.datasets.materialise` for the lock, the temporary folder and the atomic rename).
    """
    return materialise.materialise(
        root, MARKER_NAME, generation_params(cfg), lambda tmp: _write_tree(tmp, cfg, progress), "shapes3d"
    )


def default_root(cfg: Shapes3DConfig) -> Path:
    """Where ``cfg`` renders to (see :func:`build_shapes3d`)."""
    root = data_root(cfg)
    if cfg.root:
        return root
    return keyed_root(root, generation_params(cfg), generation_params(Shapes3DConfig()))


@DATASETS.register("shapes3d", Shapes3DConfig)
def build_shapes3d(cfg: Shapes3DConfig, split: str, source: str, num_views: int, seed: int) -> IE3DDataset:
    """Render into ``cfg.root`` on first use, then read it with the 3DIEBench reader. Without
    ``data.root``: ``$EQUISSL_DATA/shapes3d`` (else ``~/.cache/equissl/shapes3d``) for the default
    generation parameters, and ``shapes3d-<hash>`` beside it for any other, so renders of different
    sizes or pose distributions are each kept instead of replacing one another."""
    root = render_shapes3d(default_root(cfg), cfg)
    return IE3DDataset(
        root,
        split=split,
        source=source,
        num_views=num_views,
        seed=seed,
        image_size=cfg.image_size,
        views_per_object=cfg.views_per_object,
    )
