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


def test_equal_time_table_alternates_bases_and_their_essl_and_writes_markdown():
    """The order and the table; calibrate, pretrain and evaluate_run, which it chains, are tested elsewhere
    (a real run of the chain takes about a minute on 2 cores)."""
    table = _load("equal_time_table")
    order = table.runs(["byol", "dino"], essl=True)
    assert [label for label, _, _ in order] == ["byol", "essl/byol", "dino", "essl/dino"]
    assert order[1][1] == "byol_resnet18_shapes3d" and "objective.base=byol" in order[1][2]
    for _, name, overrides in order:
        build_config(name, overrides)  # every run's config is valid
    row = {
        "run": "essl/byol",
        "steps": 3,
        "train_seconds": 9.6,
        "linear": 50.0,
        "knn": 40.25,
        "rotation_acc": 90.0,
    }
    text = table.markdown([row], {"linear": 30.0, "knn": 20.0})
    assert (
        "| random init | 0 | 0 | 30.0 | 20.0 | |" in text
        and "| essl/byol | 3 | 10 | 50.0 | 40.2 | 90.0 |" in text
    )
