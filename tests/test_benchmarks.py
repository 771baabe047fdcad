"""The benchmark scripts still run against the current trainer (their figures are never asserted)."""

import importlib.util
from pathlib import Path

from equissl.config import build_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_measures_full_step_forward_backward_and_augmentation(tiny_overrides):
    config = build_config("simclr_resnet18_shapes3d", tiny_overrides)
    figures = _load("throughput").measure(config, steps=1, warmup=0)
    for name in ("full_step", "forward_backward", "data_and_augmentation"):
        assert figures[f"{name}_images_per_s"] > 0 and figures[f"{name}_ms_per_step"] > 0
    assert figures["augmentation_overhead_fraction"] < 1
