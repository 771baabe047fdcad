"""Training throughput of a recipe: the full step versus forward + backward alone.

full_step: data loading + batched augmentation + forward + backward + optimizer step.
forward_backward: forward + backward + optimizer step, repeated on one fixed batch of views.
The difference is the data + augmentation overhead. Prints one JSON object.

    python benchmarks/throughput.py --config simclr_resnet18_shapes3d --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch


def measure(config, steps: int, warmup: int) -> dict:
    from equissl.launch.logging import MetricLogger
    from equissl.launch.trainer import Trainer, _to_device

    trainer = Trainer(config)
    logger = MetricLogger(trainer.run_dir, config.trainer.max_steps, 0, enabled=False, progress=False)
    trainer.model.train()
    batches = trainer._batches()
    images_per_step = config.trainer.batch_size * trainer.world_size

    def full_step():
        trainer._micro_step(next(batches), sync=True)
        trainer._optimizer_step(logger)

    views = trainer.view_maker(
        _to_device(next(batches), trainer.accelerator.device), trainer.generators["augment"]
    )

    def forward_backward():
        with trainer.accelerator.autocast():
            loss = trainer.model(views).loss
        trainer._step_losses.append(loss.detach().float())  # what the step's finite check reads
        trainer.accelerator.backward(loss)
        trainer._optimizer_step(logger)

    def augmentation_only():
        trainer.view_maker(
            _to_device(next(batches), trainer.accelerator.device), trainer.generators["augment"]
        )

    figures = {}
    for name, fn in (
        ("full_step", full_step),
        ("forward_backward", forward_backward),
        ("data_and_augmentation", augmentation_only),
    ):
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        elapsed = time.perf_counter() - start
        figures[f"{name}_images_per_s"] = round(images_per_step * steps / elapsed, 1)
        figures[f"{name}_ms_per_step"] = round(1000 * elapsed / steps, 1)
    figures["augmentation_overhead_fraction"] = round(
        1 - figures["forward_backward_ms_per_step"] / figures["full_step_ms_per_step"], 3
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="simclr_resnet18_shapes3d")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from equissl.config import build_config

    with tempfile.TemporaryDirectory() as run_dir:
        config = build_config(
            args.config, [*args.overrides, f"trainer.run_dir={run_dir}", "trainer.progress=false"]
        )
        figures = measure(config, args.steps, args.warmup)
    print(
        json.dumps(
            {
                "recipe": args.config,
                "overrides": args.overrides,
                "objective": config.objective.name,
                "backbone": config.backbone.name,
                "batch_size": config.trainer.batch_size,
                "image_size": config.augment.crop_size,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                **figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
