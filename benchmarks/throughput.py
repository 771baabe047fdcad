"""Training throughput of a recipe: the full step versus forward + backward alone.

full_step: data loading + batched augmentation + forward + backward + optimizer step.
forward_backward: forward + backward + optimizer step, repeated on one fixed batch of views.
The difference is the data + augmentation overhead. Both run the trainer's own code (precision, loss
scale, channels-last, compile), in alternating rounds (median round of each). Prints one JSON object, with
the peak GPU memory on CUDA.

    python benchmarks/throughput.py --config simclr_resnet18_shapes3d --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(config, steps: int, warmup: int, rounds: int = 3) -> dict:
    from equissl.launch.trainer import _to_device

    steps_driver = TrainerSteps(config)
    trainer, logger = steps_driver.trainer, steps_driver.logger
    images_per_step = steps_driver.images_per_step
    full_step = steps_driver.step

    views = trainer.view_maker(
        _to_device(steps_driver.next_batch(), trainer.accelerator.device), trainer.generators["augment"]
    )

    def forward_backward():  # the trainer's own (precision, channels-last, compile, loss scale)
        trainer._forward_backward(views, sync=True)
        trainer._optimizer_step(logger)

    def augmentation_only():
        trainer.view_maker(
            _to_device(steps_driver.next_batch(), trainer.accelerator.device), trainer.generators["augment"]
        )

    parts = {
        "full_step": full_step,
        "forward_backward": forward_backward,
        "data_and_augmentation": augmentation_only,
    }
    for fn in parts.values():
        for _ in range(warmup):
            fn()
    # Alternating rounds, so that the ratio of full step to forward + backward is measured under the
    # same machine load; the median round of each part.
    seconds: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(rounds):
        for name, fn in parts.items():
            _synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _synchronize()
            seconds[name].append((time.perf_counter() - start) / steps)
    figures = {}
    for name, per_round in seconds.items():
        per_step = statistics.median(per_round)
        figures[f"{name}_images_per_s"] = round(images_per_step / per_step, 1)
        figures[f"{name}_ms_per_step"] = round(1000 * per_step, 1)
    figures["full_step_over_forward_backward"] = round(
        figures["full_step_images_per_s"] / figures["forward_backward_images_per_s"], 3
    )
    if torch.cuda.is_available():
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
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
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the three parts")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from equissl.config import build_config

    with tempfile.TemporaryDirectory() as run_dir:
        config = build_config(
            args.config, [*args.overrides, f"trainer.run_dir={run_dir}", "trainer.progress=false"]
        )
        figures = measure(config, args.steps, args.warmup, args.rounds)
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
