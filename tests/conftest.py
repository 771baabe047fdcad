"""Shared fixtures: tiny shapes3d and lidar_sim renders, a tiny pretraining recipe and the one tiny
backbone (:class:`tests.helpers.TinyBackbone`), all fast on 2 CPU cores."""

from __future__ import annotations

import shutil

import pytest

# The most the suite holds on disk at once, measured 2026-12-04 (3.0 GB: the module of 2-process runs), plus
# a margin. Below it, tests would fail one by one on "run directory has N MiB free".
SUITE_DISK_GB = 4.0


@pytest.fixture(scope="session", autouse=True)
def enough_disk(tmp_path_factory):
    """Stop the session at once, with one line, when the temporary directory cannot hold the suite."""
    base = tmp_path_factory.getbasetemp()
    free_gb = shutil.disk_usage(base).free / 1e9
    if free_gb < SUITE_DISK_GB:
        pytest.exit(f"{base} has {free_gb:.1f} GB free; the test suite needs about {SUITE_DISK_GB} GB", 1)


@pytest.fixture(scope="module")
def module_tmp_path(request, tmp_path_factory):
    """A directory for one test module, deleted after the module's last test.

    pytest's retention policy (``tmp_path_retention_policy = "failed"`` in pyproject) deletes only
    function-scoped ``tmp_path``; a module's run checkpoints (up to ~3 GB) would stay until the session ends.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_shapes3d_root(tmp_path_factory):
    """10 classes x (2 train + 1 val) objects x 4 views at 32 px, rendered once per test session."""
    from equissl.config import build_config
    from equissl.registry import DATASETS

    root = tmp_path_factory.mktemp("shapes3d")
    config = build_config(None, [f"data.root={root}", *TINY_DATA])
    DATASETS.build("shapes3d", config.data, split="train", source="image", num_views=1, seed=0)
    return root


TINY_DATA = [
    "data.objects_per_class=2",
    "data.val_objects_per_class=1",
    "data.views_per_object=4",
    "data.render_size=32",
    "data.image_size=32",
    "data.num_workers=0",
    "data.rotations=so3",  # recipes that draw 3DIEBench's poses must still read this one shared render
    "data.lighting=varied",  # likewise recipes that render with fixed lighting
]


@pytest.fixture
def tiny_overrides(tiny_shapes3d_root, tmp_path):
    """Overrides turning the default recipe into a seconds-long run in ``tmp_path/run``."""
    return [
        f"data.root={tiny_shapes3d_root}",
        *TINY_DATA,
        "augment.crop_size=32",
        "augment.small_crop_size=16",
        "backbone.stem=strided",
        "objective.proj_hidden_dim=64",
        "objective.proj_out_dim=32",
        "trainer.batch_size=8",
        "trainer.max_steps=6",
        "trainer.checkpoint_every=2",
        "trainer.log_every=1",
        "trainer.progress=false",
        "trainer.precision=fp32",
        "probe.epochs=5",
        f"trainer.run_dir={tmp_path}/run",
    ]


@pytest.fixture
def tiny_backbone():
    """The one tiny backbone of the tests (width 8), freshly initialised with seed 0."""
    import torch

    from tests.helpers import TinyBackbone

    torch.manual_seed(0)
    return TinyBackbone()


def tiny_sim_config(**overrides):
    """A lidar_sim config that renders in seconds: 2 train + 1 val drives of 3 sweeps."""
    from equissl.datasets.lidar_sim import LidarSimConfig

    values = {
        "num_sequences": 2,
        "val_sequences": 1,
        "frames_per_sequence": 3,
        "beams": 12,
        "azimuth_steps": 240,
        "cars": 10,
        "pedestrians": 6,
        "cyclists": 3,
        "render_workers": 1,
        "max_points": 4000,
        "seed": 3,
    }
    values.update(overrides)
    return LidarSimConfig(**values)


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory):
    """(root, config) of a rendered tiny lidar_sim dataset: 2 train + 1 val drives of 3 sweeps."""
    from equissl.datasets.lidar_sim import render_lidar_sim

    cfg = tiny_sim_config()
    root = render_lidar_sim(tmp_path_factory.mktemp("lidar") / "lidar_sim", cfg, progress=False)
    return root, cfg


def tiny_sim_overrides(root, cfg) -> list[str]:
    """``data.*`` overrides that read the tiny_sim render (the generation settings must match it)."""
    keys = (
        "num_sequences",
        "val_sequences",
        "frames_per_sequence",
        "beams",
        "azimuth_steps",
        "cars",
        "pedestrians",
        "cyclists",
        "seed",
    )
    return [
        f"data.root={root}",
        "data.num_workers=0",
        "data.max_points=3000",
        *(f"data.{key}={getattr(cfg, key)}" for key in keys),
    ]
