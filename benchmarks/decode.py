"""JPEG decoding in the data workers against on the training device: ``data.decode=workers`` vs ``device``.

The full SimCLR training step of the real trainer (data loading, crops from the full images, batched
augmentation, forward, backward, optimizer step), ResNet-50 at 224 px by default, on a folder of JPEGs this
script writes itself (``--images``, about ImageNet's 500 x 375, smooth photo-like content). The two
settings are two trainers built side by side and timed in alternating rounds (which one goes first
alternates too); a round times ``--steps`` steps after ``--warmup`` untimed ones. Prints one JSON object:
images/s of each (median over rounds), the ratio device / workers (median of the per-round ratios), the
device and the settings.

    python benchmarks/decode.py --images 2048 --batch-size 128 --workers 8 --steps 20 --rounds 3
    python benchmarks/decode.py --dry   # a few tiny images, 32 px, resnet18, 1 step: a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODES = ("workers", "device")
# (width, height) of the written images, in turn: ImageNet's common landscape, portrait and wider shapes
SHAPES = ((500, 375), (375, 500), (500, 333), (500, 400))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="JPEGs written to the folder")
    parser.add_argument("--folder", default="", help="where to write them (default: a temporary folder)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224, help="crop side, pixels")
    parser.add_argument("--batch-size", type=int, default=64, help="per step")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data.num_workers")
    parser.add_argument("--prefetch-factor", type=int, default=2)
    parser.add_argument(
        "--precision", default="", help="trainer.precision (default: bf16 on CUDA, else fp32)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dry", action="store_true", help="tiny: 8 images, 32 px, resnet18, 1 step")
    parser.add_argument("overrides", nargs="*", help="further key=value overrides for both trainers")
    args = parser.parse_args(argv)
    if args.dry:
        args.images, args.backbone, args.image_size, args.batch_size = 8, "resnet18", 32, 4
        args.workers, args.steps, args.warmup, args.rounds = 0, 1, 0, 1
    return args


def write_images(folder: Path, count: int, small: bool = False, seed: int = 0) -> None:
    """``count`` JPEGs (quality 90) of smooth random colour fields with fine grain, sized as ImageNet's
    (``SHAPES``; ``small``: 64 x 48): decoding costs what a photo of that size costs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        width, height = (64, 48) if small else SHAPES[k % len(SHAPES)]
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:06d}.jpg", quality=90)


def build_trainer(args: argparse.Namespace, folder: Path, mode: str, run_dir: Path):
    from equissl.config import build_config
    from equissl.launch.trainer import Trainer

    precision = args.precision or ("bf16" if torch.cuda.is_available() else "fp32")
    stem = "strided" if args.dry else "imagenet"
    data = f"{{name: imagefolder, root: {folder}, num_workers: {args.workers}, decode: {mode}}}"
    config = build_config(
        "simclr_resnet18_shapes3d",
        [
            f"data={data}",
            f"data.image_size={args.image_size}",
            f"data.prefetch_factor={args.prefetch_factor}",
            f"augment.crop_size={args.image_size}",
            f"backbone.name={args.backbone}",
            f"backbone.stem={stem}",
            f"trainer.batch_size={args.batch_size}",
            f"trainer.precision={precision}",
            "trainer.max_steps=1000000",
            "trainer.checkpoint_every=1000000",
            "trainer.progress=false",
            f"trainer.run_dir={run_dir}",
            *args.overrides,
        ],
    )
    return Trainer(config)


class Timed:
    """One trainer's full training step, as the loop runs it (``_micro_step`` + ``_optimizer_step``)."""

    def __init__(self, trainer) -> None:
        from equissl.launch.logging import MetricLogger

        self.trainer = trainer
        self.logger = MetricLogger(trainer.run_dir, 1, 0, enabled=False, progress=False)
        trainer.model.train()
        self.batches = trainer._batches()

    def steps(self, count: int) -> float:
        """Seconds for ``count`` steps, the device synchronised at both ends."""
        device = self.trainer.accelerator.device
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            self.trainer._micro_step(next(self.batches), sync=True)
            self.trainer._optimizer_step(self.logger)
        _synchronize(device)
        return time.perf_counter() - start

    def close(self) -> None:
        self.batches.close()  # its workers end now


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, folder: Path, run_root: Path) -> dict:
    """{"per_round": [{mode: images/s}], "images_per_s": {mode: median}, "ratio": median device / workers}."""
    timed = {mode: Timed(build_trainer(args, folder, mode, run_root / mode)) for mode in MODES}
    per_round = []
    try:
        for round_number in range(args.rounds):
            order = MODES if round_number % 2 == 0 else MODES[::-1]
            figures = {}
            for mode in order:
                timed[mode].steps(args.warmup)
                seconds = timed[mode].steps(args.steps)
                figures[mode] = round(args.steps * args.batch_size / seconds, 2)
            per_round.append(figures)
    finally:
        for one in timed.values():
            one.close()
    ratios = [r["device"] / r["workers"] for r in per_round]
    return {
        "images_per_s": {mode: statistics.median(r[mode] for r in per_round) for mode in MODES},
        "device_over_workers": round(statistics.median(ratios), 3),
        "per_round": per_round,
        "device": str(timed["device"].trainer.accelerator.device),
    }


def run(args: argparse.Namespace) -> dict:
    import torchvision

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch) / "images"
        if not folder.is_dir() or len(list(folder.glob("*.jpg"))) < args.images:
            write_images(folder, args.images, small=args.dry)
        figures = measure(args, folder, Path(scratch) / "runs")
    return {
        **figures,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        "settings": {
            "images": args.images,
            "backbone": args.backbone,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "prefetch_factor": args.prefetch_factor,
            "precision": args.precision or ("bf16" if torch.cuda.is_available() else "fp32"),
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "overrides": args.overrides,
            "dry": args.dry,
        },
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> None:
    print(json.dumps(run(parse_args()), indent=2))


if __name__ == "__main__":
    main()
