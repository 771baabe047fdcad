"""Fixtures of the LiDAR tests: one intra-op thread per test (the tiny_sim render is in tests/conftest.py).

One thread: on a shared 2-core machine oneDNN's two spinning threads can run 10x slower than one.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
