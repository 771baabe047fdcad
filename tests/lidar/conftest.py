"""Fixtures of the LiDAR tests: one tiny simulated dataset per session, one intra-op thread per test.

One thread: on a shared 2-core machine oneDNN's two spinning threads can run 10x slower than one.
"""

from __future__ import annotations

import pytest
import torch

from equissl.datasets.lidar_sim import LidarSimConfig, render_lidar_sim


def tiny_sim_config(**overrides) -> LidarSimConfig:
    values = {"num_sequences": 2, "val_sequences": 1, "frames_per_sequence": 3, "beams": 12, "azimuth_steps": 240,
              "cars": 10, "pedestrians": 6, "cyclists": 3, "render_workers": 1, "max_points": 4000, "seed": 3}
    values.update(overrides)
    return LidarSimConfig(**values)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory):
    """(root, config) of a rendered tiny lidar_sim dataset: 2 train + 1 val drives of 3 sweeps."""
    cfg = tiny_sim_config()
    root = render_lidar_sim(tmp_path_factory.mktemp("lidar") / "lidar_sim", cfg, progress=False)
    return root, cfg
