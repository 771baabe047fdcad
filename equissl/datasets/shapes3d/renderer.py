"""The shapes3d renderer: 3DIEBench's scene, ray-cast with open3d on the CPU, and the latent samplers.

The scene (from 3DIEBench's generator, facebookresearch/SIE ``data/main.py``): camera at distance 2.5,
polar angle pi/4, azimuth pi/2, looking at the origin (Blender's default 50 mm lens on a 36 mm sensor:
39.6 degree field of view); the object centred on its bounding box at the origin; a floor plane at z = -1
coloured HSV (floor hue, 0.6, 0.6); a spot light at distance 4 in direction (theta, phi) coloured HSV
(light hue, 1, 0.8) plus a white sun.

Where we differ, on purpose: our light is directional (from direction (theta, phi)) with a softer colour
(saturation ``LIGHT_SATURATION``), plus a white ambient and sky term; shading is Lambertian with
ray-traced shadows. A latent holds the 7 values of ``equissl.latents.LATENT_NAMES``; :func:`sample_latents` draws them
(poses by ``data.rotations``: see :mod:`equissl.datasets.shapes3d`; lighting by ``data.lighting``: drawn
per view, or ``FIXED_LIGHTING`` for every view).
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from equissl.datasets.open3d_extra import open3d

if TYPE_CHECKING:  # annotations only: open3d is imported on first use (open3d_extra)
    import open3d as o3d
from equissl.datasets.shapes3d.catalogue import Mesh
from equissl.errors import ConfigError

# Scene constants, from 3DIEBench's generator (see module docstring).
CAMERA_DISTANCE = 2.5
CAMERA_POSITION = CAMERA_DISTANCE * np.array([0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
CAMERA_FOV = 2.0 * np.arctan(18.0 / 50.0)  # radians, full angle (square images)
FLOOR_HEIGHT = -1.0
FLOOR_SATURATION, FLOOR_VALUE = 0.6, 0.6
LIGHT_SATURATION = 0.6
AMBIENT, SKY, KEY = 0.12, 0.35, 1.1  # linear-light weights of the three lighting terms
GAMMA = 2.2

LIGHTINGS = ("varied", "fixed")  # data.lighting
# data.lighting=fixed: floor hue, light theta, light phi and light hue held at the centre of their ranges
# (latents 3 to 6), so that only the pose varies between an object's views.
FIXED_LIGHTING = (0.5, np.pi / 8, np.pi, 0.5)

LATENT_RANGES = (  # closed bounds of each latent, in LATENT_NAMES order
    (-np.pi, np.pi),
    (-np.pi / 2, np.pi / 2),
    (-np.pi, np.pi),
    (0.0, 1.0),
    (0.0, np.pi / 4),
    (0.0, 2 * np.pi),
    (0.0, 1.0),
)


def _so3_euler(rng: np.random.Generator, count: int) -> np.ndarray:
    quats = rng.standard_normal((count, 4))  # a normalised Gaussian 4-vector is uniform on SO(3)
    return Rotation.from_quat(quats / np.linalg.norm(quats, axis=1, keepdims=True)).as_euler("xyz")


def _3diebench_euler(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(-np.pi / 2, np.pi / 2, (count, 3))


EULER_SAMPLERS = {"so3": _so3_euler, "3diebench": _3diebench_euler}  # data.rotations -> (count, 3) angles


def euler_sampler(rotations: str) -> Callable[[np.random.Generator, int], np.ndarray]:
    """The Euler-angle sampler of pose distribution ``rotations``; ValueError naming the key otherwise."""
    if rotations not in EULER_SAMPLERS:
        raise ConfigError(f"data.rotations must be one of {sorted(EULER_SAMPLERS)}, got {rotations!r}")
    return EULER_SAMPLERS[rotations]


def check_lighting(lighting: str) -> None:
    if lighting not in LIGHTINGS:
        raise ConfigError(f"data.lighting must be one of {list(LIGHTINGS)}, got {lighting!r}")


def sample_latents(
    rng: np.random.Generator, count: int, rotations: str = "so3", lighting: str = "varied"
) -> np.ndarray:
    """(count, 7) float32 latents (``LATENT_NAMES``): xyz Euler angles of a rotation uniform on SO(3)
    (``rotations="so3"``) or each uniform in [-pi/2, pi/2] (``"3diebench"``), the rest uniform in
    ``LATENT_RANGES`` (``lighting="varied"``) or ``FIXED_LIGHTING`` (``"fixed"``). The lighting values are
    drawn either way, so a fixed-lighting render has the poses of the varied render with the same seed."""
    check_lighting(lighting)
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
    if lighting == "fixed":
        rest = np.broadcast_to(np.asarray(FIXED_LIGHTING), rest.shape)
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
    o3d = open3d()
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
    o3d = open3d()
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
