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


class TrainerSteps:
    """The real trainer's full step, driven outside ``Trainer.fit`` (no checkpoints, no logging).

    ``step()``: next batch from the trainer's DataLoader (decode in its workers) + batched augmentation
    + forward + backward + the trainer's checks + optimizer and scheduler step.
    ``start()`` / ``stop()``: start the trainer's DataLoader workers afresh / shut them down, so that a
    benchmark alternating with another pipeline gives neither side batches prefetched while the other ran.
    """

    def __init__(self, config) -> None:
        from equissl.launch.logging import MetricLogger
        from equissl.launch.trainer import Trainer

        self.trainer = Trainer(config)
        self.logger = MetricLogger(
            self.trainer.run_dir, config.trainer.max_steps, 0, enabled=False, progress=False
        )
        self.trainer.model.train()
        self.images_per_step = config.trainer.batch_size * self.trainer.world_size
        self.batches = None

    def start(self) -> None:
        self.batches = self.trainer._batches()  # the sampler continues where the previous one stopped

    def stop(self) -> None:
        if self.batches is not None:
            self.batches.close()  # the generator's finally shuts its workers down
            self.batches = None

    def next_batch(self) -> dict:
        if self.batches is None:
            self.start()
        return next(self.batches)

    def step(self) -> None:
        self.trainer._micro_step(self.next_batch(), sync=True)
        self.trainer._optimizer_step(self.logger)


def measure(config, steps: int, warmup: int) -> dict:
    from equissl.launch.trainer import _to_device

    steps_driver = TrainerSteps(config)
    trainer, logger = steps_driver.trainer, steps_driver.logger
    images_per_step = steps_driver.images_per_step
    full_step = steps_driver.step

    views = trainer.view_maker(
        _to_device(steps_driver.next_batch(), trainer.accelerator.device), trainer.generators["augment"]
    )

    def forward_backward():
        with trainer.accelerator.autocast():
            loss = trainer.model(views).loss
        trainer._step_losses.append(loss.detach().float())  # what the step's finite check reads
        trainer.accelerator.backward(loss)
        trainer._optimizer_step(logger)

    def augmentation_only():
        trainer.view_maker(
            _to_device(steps_driver.next_batch(), trainer.accelerator.device), trainer.generators["augment"]
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
    steps_driver.stop()
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
