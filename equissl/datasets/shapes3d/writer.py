"""Writing shapes3d in 3DIEBench's on-disk layout, through the shared materialiser.

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

Ours: synset ids are synthetic (``9xxxxxxx``, not WordNet) and ``class_names.json`` maps them to
readable names; the marker ``shapes3d.json`` (written last, by :mod:`equissl.datasets.materialise`)
holds the hash of the generation parameters. Object k of class c depends only on (seed, c, k): the
output is identical for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from equissl.datasets import materialise
from equissl.datasets.open3d_extra import open3d
from equissl.datasets.shapes3d.catalogue import CLASS_NAMES, Mesh, build_object
from equissl.datasets.shapes3d.renderer import check_lighting, euler_sampler, render_view, sample_latents
from equissl.errors import ConfigError
from equissl.latents import LATENT_NAMES

if TYPE_CHECKING:  # the config lives in the package's __init__, which imports this module
    from equissl.datasets.shapes3d import Shapes3DConfig

RENDERER_VERSION = 1  # bump when a change alters the rendered bytes: older renders are then refused, not read
MARKER_NAME = "shapes3d.json"
CLASS_NAMES_FILE = "class_names.json"


def synset_id(class_index: int) -> str:
    """8-digit synset folder name of a class (synthetic, outside WordNet's 0xxxxxxx range)."""
    return f"{90000001 + class_index:08d}"


def object_id(class_index: int, number: int) -> str:
    """32-hex object folder name (ShapeNet style), fixed by class and instance number."""
    return hashlib.md5(f"shapes3d/{CLASS_NAMES[class_index]}/{number}".encode()).hexdigest()


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
    folder, seed, class_index, number, views, size, supersample, rotations, lighting = task
    shape_rng, view_rng = _object_rngs(seed, class_index, number)
    mesh = build_object(class_index, shape_rng)
    latents = sample_latents(view_rng, views, rotations, lighting)
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
        raise ConfigError(f"data.num_classes must be in [1, {len(CLASS_NAMES)}], got {cfg.num_classes}")
    for key in ("objects_per_class", "views_per_object", "render_size", "supersample"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.val_objects_per_class < 0 or cfg.seed < 0:
        raise ConfigError("data.val_objects_per_class and data.seed must be >= 0")
    euler_sampler(cfg.rotations)  # refuse an unknown pose distribution before any rendering
    check_lighting(cfg.lighting)
    # the pose distribution and the lighting enter only when not the default, so existing renders (and
    # the default cache folder) stay valid
    pose = {} if cfg.rotations == "so3" else {"rotations": cfg.rotations}
    light = {} if cfg.lighting == "varied" else {"lighting": cfg.lighting}
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
        **light,
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
                    cfg.lighting,
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
    if not materialise.is_complete(root, MARKER_NAME, generation_params(cfg)):
        open3d()  # rendering needs the 3d extra: say so before any lock or folder is made
    return materialise.materialise(
        root, MARKER_NAME, generation_params(cfg), lambda tmp: _write_tree(tmp, cfg, progress), "shapes3d"
    )
