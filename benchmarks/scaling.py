"""Training throughput (images/s over all processes) of ``equissl pretrain`` on 1 and 2 processes.

Each configuration runs the real command (``torchrun --standalone`` for more than one process, as
``equissl launch`` does) on a small shapes3d render and reads images/s from the run's metrics.jsonl,
ignoring the first ``--warmup`` steps. Weak scaling: the per-process batch is fixed, so 2 processes train on
twice the global batch. On CPU each process of a multi-process run gets ``OMP_NUM_THREADS=1`` (torchrun's
default) while the 1-process run uses every core: the figures say what this machine gives, not ideal
scaling. Set OMP_NUM_THREADS=1 to give every configuration one thread per process (on a loaded machine a
1-process run with several threads mostly measures oversubscription). Prints one JSON object.

    python benchmarks/scaling.py [--processes 1 2] [--steps 12] [--batch-size 16] [--device cpu|auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPE = "simclr_resnet18_shapes3d"
DATA = [
    "data.objects_per_class=2",
    "data.val_objects_per_class=1",
    "data.views_per_object=8",
    "data.render_size=64",
    "data.num_workers=1",
]


def _run(processes: int, args, data_root: Path, run_dir: Path) -> dict:
    from equissl.launch.launcher import LaunchSpec, build_command

    overrides = [
        f"data.root={data_root}",
        *DATA,
        f"data.image_size={args.image_size}",
        f"augment.crop_size={args.image_size}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.max_steps={args.steps}",
        "trainer.log_every=1",
        "trainer.checkpoint_every=100000",
        "trainer.progress=false",
        f"trainer.run_dir={run_dir}",
    ]
    command = build_command(LaunchSpec(RECIPE, overrides, nproc_per_node=processes, device=args.device))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r["images_per_s"] for r in rows if r["step"] > args.warmup]
    # images_per_s per row covers one step; the harmonic mean is total images / total time
    images_per_s = len(timed) / sum(1.0 / v for v in timed)
    return {
        "processes": processes,
        "global_batch": processes * args.batch_size,
        "images_per_s": round(images_per_s, 2),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "auto"], default="cpu")
    args = parser.parse_args()
    from equissl.config import build_config
    from equissl.registry import DATASETS

    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "shapes3d"
        config = build_config(None, [f"data.root={data_root}", *DATA, f"data.image_size={args.image_size}"])
        DATASETS.build(
            "shapes3d", config.data, split="train", source="image", num_views=1, seed=0
        )  # render once
        results = [_run(n, args, data_root, Path(tmp) / f"run-{n}") for n in args.processes]
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup_vs_first"] = round(r["images_per_s"] / base, 3)
    print(
        json.dumps(
            {
                "benchmark": "scaling",
                "recipe": RECIPE,
                "device": args.device,
                "gpu": torch.cuda.get_device_name(0)
                if args.device != "cpu" and torch.cuda.is_available()
                else None,
                "cpu_cores": os.cpu_count(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "machine": platform.machine(),
                "batch_size_per_process": args.batch_size,
                "image_size": args.image_size,
                "steps": args.steps,
                "warmup_steps": args.warmup,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
