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
    config = build_config("configs/simclr_resnet18_shapes3d.yaml", tiny_overrides)
    figures = _load("throughput").measure(config, steps=1, warmup=0)
    for name in ("full_step", "forward_backward", "data_and_augmentation"):
        assert figures[f"{name}_images_per_s"] > 0 and figures[f"{name}_ms_per_step"] > 0
    assert figures["augmentation_overhead_fraction"] < 1


def test_symmetrized_benchmark_times_every_variant_against_the_bare_model():
    import argparse

    args = argparse.Namespace(batch_size=2, image_size=32, warmup=0, repeats=1, backbones=["convnext_atto"])
    figures = _load("symmetrized").throughput(args)["timm convnext_atto"]
    assert set(figures["images_per_s"]) == {
        "bare",
        "frame c4",
        "frame d4",
        "canonicalizer c4",
        "canonicalizer c8",
    }
    assert figures["relative_to_bare"]["bare"] == 1.0 and all(v > 0 for v in figures["images_per_s"].values())
    params = figures["params"]
    assert (
        params["frame c4"] == params["bare"] < params["canonicalizer c4"]
    )  # frame averaging adds no weights
