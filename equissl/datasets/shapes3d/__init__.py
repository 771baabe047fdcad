"""``shapes3d``: a small procedural stand-in for 3DIEBench, rendered on the CPU and written in its format.

- :mod:`~equissl.datasets.shapes3d.catalogue`: the object classes (``CLASS_NAMES``), built from open3d
  primitives with seeded per-instance proportions and colours;
- :mod:`~equissl.datasets.shapes3d.renderer`: 3DIEBench's scene (camera, floor, light), the ray-cast
  renderer and the latent samplers;
- :mod:`~equissl.datasets.shapes3d.writer`: 3DIEBench's on-disk layout (what was checked against SIE is
  written there) and :func:`render_shapes3d`;
- here: the config and the ``shapes3d`` dataset factory, read with the 3DIEBench reader
  (:class:`~equissl.datasets.ie3d.IE3DDataset`).

Where we differ from 3DIEBench, on purpose: 3DIEBench draws each Euler angle uniformly in
[-pi/2, pi/2] (not uniform on SO(3)); by default (``rotations: so3``) we draw rotations uniformly on
SO(3) and store ``Rotation.as_euler("xyz")``, so x and z lie in [-pi, pi] and y in [-pi/2, pi/2].
``rotations: 3diebench`` draws as 3DIEBench does (each angle uniform in [-pi/2, pi/2], stored as drawn):
the object's up axis then never points below the horizon, the distribution SIE, seq-JEPA and EquiCaps
were measured on. Lighting and synset ids differ too (see the renderer and the writer).

``lighting: fixed`` holds the floor hue, the light direction and the light hue at the centre of their
ranges (``renderer.FIXED_LIGHTING``) for every view, so that an object's views differ by pose alone; the
lighting latents are still drawn, so the poses are those of the ``varied`` render with the same seed. It
renders to its own cache folder, as every other generation setting does.

``render_shapes3d(root, cfg)`` is idempotent: it renders into a temporary folder, writes the marker
``shapes3d.json`` (holding the hash of the generation parameters) last and renames the folder into
place, so a killed render never looks complete; a folder holding anything else, a render with other
parameters included, is refused, never replaced. Output is identical for any number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from equissl.config import DataConfig
from equissl.datasets.ie3d import IE3DDataset, data_root
from equissl.datasets.materialise import keyed_root
from equissl.datasets.materialise import params_sha256 as params_hash  # its name here before the materialiser
from equissl.datasets.shapes3d import catalogue, renderer, writer
from equissl.datasets.shapes3d.catalogue import CLASS_NAMES, Mesh, build_object, mesh_from_parts
from equissl.datasets.shapes3d.renderer import (
    CAMERA_FOV,
    CAMERA_POSITION,
    FIXED_LIGHTING,
    LATENT_RANGES,
    euler_sampler,
    render_view,
    sample_latents,
)
from equissl.datasets.shapes3d.writer import (
    MARKER_NAME,
    RENDERER_VERSION,
    generation_params,
    is_complete,
    object_id,
    object_mesh,
    render_shapes3d,
    synset_id,
)
from equissl.registry import DATASETS

__all__ = [
    "CAMERA_FOV",
    "CAMERA_POSITION",
    "CLASS_NAMES",
    "FIXED_LIGHTING",
    "LATENT_RANGES",
    "MARKER_NAME",
    "RENDERER_VERSION",
    "Mesh",
    "Shapes3DConfig",
    "build_object",
    "build_shapes3d",
    "catalogue",
    "default_root",
    "euler_sampler",
    "generation_params",
    "is_complete",
    "mesh_from_parts",
    "object_id",
    "object_mesh",
    "params_hash",
    "render_shapes3d",
    "render_view",
    "renderer",
    "sample_latents",
    "synset_id",
    "writer",
]


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
    lighting: Literal["varied", "fixed"] = "varied"  # fixed: one lighting for every view (module docstring)
    render_workers: int = 2  # processes; the output does not depend on it


def default_root(cfg: Shapes3DConfig) -> Path:
    """Where ``cfg`` renders to (see :func:`build_shapes3d`)."""
    root = data_root(cfg)
    if cfg.root:
        return root
    return keyed_root(root, generation_params(cfg), generation_params(Shapes3DConfig()))


@DATASETS.register(
    "shapes3d",
    Shapes3DConfig,
    embedded=True,
    source="image",
    description="embedded: procedural 3D objects rendered in 3DIEBench's layout (default data)",
)
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
