"""Side by side in one process: equissl's full SimCLR step against the pipeline a lightly user writes.

    python benchmarks/peers.py --rounds 5 --steps-per-round 3 --precision fp32

Rounds alternate (equissl, lightly, equissl, lightly, ...), so both sides see the same machine load; the
JSON gives each side's images/s (median over its rounds), their ratio, every round's figures and the
settings. Every round starts each side's DataLoader workers afresh and shuts them down at its end: no side
gets batches prefetched while the other one ran. ``--warmup`` untimed steps open every round.

equissl side: the real ``Trainer`` of the recipe (default ``simclr_resnet18_shapes3d``), driven step by
step as ``benchmarks/throughput.py`` does: the trainer's DataLoader (JPEG decode in its workers), batched
augmentation of the whole batch in the main process, one forward of both views, backward, the trainer's
finiteness checks and gradient norm, AdamW and the warmup + cosine schedule, and the recipe's online
linear probe (``trainer.online_probe``, 512 x 10 weights on detached features).

lightly side, as lightly's SimCLR example writes it: the same training images (the equissl dataset
wrapped, each image handed to the transform as a PIL image), ``lightly.transforms.SimCLRTransform`` per
sample in DataLoader workers, ``torchvision.models.resnet18()`` without ``fc`` (the recipe's
``stem: imagenet`` is torchvision's stem, so the two backbones are the same network),
``SimCLRProjectionHead`` and ``NTXentLoss``, ``torch.optim.AdamW`` over all parameters, ``loss.backward()``,
``optimizer.step()``, ``optimizer.zero_grad()``. Same batch, precision (``torch.autocast`` bf16 when the
recipe uses bf16), ``torch.set_num_threads``, number of DataLoader workers, device and images.

Settings of the recipe the lightly side matches: crop size (``input_size``), crop scale (``min_scale``),
horizontal flip, colour-jitter probability and strengths (brightness / contrast / saturation / hue, with
``cj_strength=1``), grayscale probability, blur probability and sigmas, ImageNet normalisation,
projector widths (hidden = backbone width, output ``objective.proj_out_dim``), temperature, optimizer
class, lr and weight decay. What differs, because lightly's API has no setting for it:
- resampling of the crop: PIL's antialiased bilinear resize (torchvision on PIL images) where the recipe
  uses plain bilinear sampling (``augment.antialias: false``);
- crop aspect ratios: torchvision's default (3/4, 4/3), which is the recipe's ``augment.crop_ratio``;
- two backbone forwards, one per view, as lightly's example (``--lightly-forward joint``: one forward of
  both views, as equissl);
- projector output BatchNorm with a shift (equissl: scale only, ``proj_last_norm: bn_scale_only``);
- weight decay on every parameter (equissl excludes biases and norms), no lr schedule, no online probe;
- NT-Xent computed in the autocast dtype (equissl upcasts the projections to fp32 first).

Without lightly installed (it comes with the ``bench`` extra: ``pip install 'equissl[bench]'``) only the
equissl side runs and the JSON says ``"lightly": "not installed"``. ``--dry``: batch 4, 32-px images, one
round of one step and no warmup, for tests. Trailing ``key=value`` arguments override the recipe (and so
both sides); the flags are applied after them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

DEFAULT_RECIPE = "simclr_resnet18_shapes3d"
DRY = {"batch_size": 4, "image_size": 32, "rounds": 1, "steps_per_round": 1, "warmup": 0}


# -- settings ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_RECIPE, help="a SimCLR recipe with backbone resnet18")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side, alternating")
    parser.add_argument("--steps-per-round", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every round")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of each side (default: the recipe's)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: the recipe's")
    parser.add_argument("--image-size", type=int, help="data.image_size, which the crop size follows")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument(
        "--lightly-forward",
        choices=("separate", "joint"),
        default="separate",
        help="lightly side: one backbone forward per view (lightly's example) or one of both views",
    )
    parser.add_argument(
        "--dry", action="store_true", help="tiny: " + ", ".join(f"{k}={v}" for k, v in DRY.items())
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = parser.parse_args(argv)
    if args.dry:
        for key, value in DRY.items():
            setattr(args, key, value)
    for name in ("rounds", "steps_per_round", "batch_size", "threads", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("warmup", "workers"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name} must be >= 0, got {value}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def recipe_overrides(args: argparse.Namespace, run_dir: str) -> list[str]:
    """The trailing overrides, then the flags' (so a flag wins), then the benchmark's own."""
    flags = {
        "trainer.batch_size": args.batch_size,
        "data.num_workers": args.workers,
        "trainer.precision": args.precision,
        "data.image_size": args.image_size,
    }
    return [
        *args.overrides,
        *(f"{key}={value}" for key, value in flags.items() if value is not None),
        f"trainer.device={'cpu' if args.device == 'cpu' else 'auto'}",
        f"trainer.run_dir={run_dir}",
        "trainer.progress=false",
    ]


def check_comparable(config) -> None:
    """The lightly side is SimCLR on torchvision's resnet18: refuse recipes it cannot mirror."""
    from equissl.errors import ConfigError

    found = (config.objective.name, config.backbone.name, getattr(config.backbone, "stem", None))
    if found != ("simclr", "resnet18", "imagenet"):
        raise ConfigError(
            "peers.py compares SimCLR on torchvision's resnet18: needs objective.name=simclr, "
            f"backbone.name=resnet18, backbone.stem=imagenet; got {found}"
        )
    if config.trainer.grad_accum_steps != 1 or config.objective.views != "image":
        raise ConfigError("peers.py needs trainer.grad_accum_steps=1 and objective.views=image")


def lightly_version() -> str | None:
    try:
        import lightly
    except ImportError:
        return None
    return lightly.__version__


def lightly_transform_kwargs(augment) -> dict:
    """``SimCLRTransform`` arguments matching the recipe's ``augment`` section (module docstring)."""
    return {
        "input_size": augment.crop_size,
        "min_scale": augment.crop_scale[0],
        "hf_prob": augment.hflip_prob,
        "cj_prob": augment.jitter_prob,
        "cj_strength": 1.0,
        "cj_bright": augment.brightness,
        "cj_contrast": augment.contrast,
        "cj_sat": augment.saturation,
        "cj_hue": augment.hue,
        "random_gray_scale": augment.grayscale_prob,
        "gaussian_blur": augment.blur_prob,
        "sigmas": tuple(augment.blur_sigma),
        "normalize": {"mean": list(augment.mean), "std": list(augment.std)},
    }


# -- the lightly side -------------------------------------------------------------------------------------
class AsPILImages(Dataset):
    """The equissl training dataset's images (uint8 (3, H, W) tensors) as PIL images, each passed through
    ``transform``: items ``(transform(image), label)``, as lightly's datasets give them."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import to_pil_image

        item = self.dataset[index]
        return self.transform(to_pil_image(item["image"])), int(item["label"])


class LightlySimCLR(nn.Module):
    """lightly's SimCLR example model: torchvision backbone without ``fc``, then the projection head."""

    def __init__(self, backbone: nn.Module, projection_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projection_head = backbone, projection_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, output_dim) projections."""
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class LightlySteps:
    """One training step of the lightly pipeline per ``step()``; ``start()`` / ``stop()`` as TrainerSteps."""

    def __init__(self, config, dataset: Dataset, device: torch.device, forward: str) -> None:
        import torchvision
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform

        tc, oc = config.trainer, config.objective
        torch.manual_seed(tc.seed)
        resnet = torchvision.models.resnet18()
        backbone = nn.Sequential(*list(resnet.children())[:-1])  # everything but fc
        width = resnet.fc.in_features
        head = SimCLRProjectionHead(width, oc.proj_hidden_dim or width, oc.proj_out_dim, oc.proj_num_layers)
        self.model = LightlySimCLR(backbone, head).to(device).train()
        self.criterion = NTXentLoss(temperature=oc.temperature)
        optimizer_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
        if config.optim.name not in optimizer_cls:
            from equissl.errors import ConfigError

            raise ConfigError(
                f"peers.py: optim.name={config.optim.name!r}; expected one of {list(optimizer_cls)}"
            )
        extra = {"momentum": config.optim.momentum} if config.optim.name == "sgd" else {}
        self.optimizer = optimizer_cls[config.optim.name](
            self.model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay, **extra
        )
        self.transform_kwargs = lightly_transform_kwargs(config.augment)
        self.loader = DataLoader(
            AsPILImages(dataset, SimCLRTransform(**self.transform_kwargs)),
            batch_size=tc.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=config.data.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(tc.seed),
        )
        self.device, self.forward, self.bf16 = device, forward, tc.precision == "bf16"
        self.images_per_step = tc.batch_size
        self.batches = None

    def start(self) -> None:
        self.batches = iter(self.loader)

    def stop(self) -> None:
        shut_down = getattr(self.batches, "_shutdown_workers", None)  # no public call (trainer.py says why)
        if shut_down is not None:
            shut_down()
        self.batches = None

    def next_batch(self):
        if self.batches is None:
            self.start()
        try:
            return next(self.batches)
        except StopIteration:  # an epoch ended: a new one, as a training loop's next epoch
            self.start()
            return next(self.batches)

    def step(self) -> None:
        (x0, x1), _ = self.next_batch()
        x0 = x0.to(self.device, non_blocking=True)
        x1 = x1.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.forward == "joint":
                z0, z1 = self.model(torch.cat([x0, x1])).chunk(2)
            else:
                z0, z1 = self.model(x0), self.model(x1)
            loss = self.criterion(z0, z1)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


# -- rounds -----------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(side, warmup: int, steps: int, device: torch.device) -> float:
    """Images/s of ``steps`` steps of ``side`` after ``warmup`` untimed ones, its workers started afresh."""
    side.start()
    try:
        for _ in range(warmup):
            side.step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            side.step()
        synchronize(device)
        elapsed = time.perf_counter() - start
    finally:
        side.stop()
    return side.images_per_step * steps / elapsed


def alternate(sides: dict, rounds: int, warmup: int, steps: int, device: torch.device) -> dict[str, list]:
    """Per side, its images/s in each round; the sides take turns in the order of ``sides``."""
    figures: dict[str, list] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            figures[name].append(timed_round(side, warmup, steps, device))
    return figures


def summary(per_round: list[float], images_per_step: int) -> dict:
    median = statistics.median(per_round)
    return {
        "images_per_s": round(median, 2),
        "ms_per_step": round(1000 * images_per_step / median, 1),
        "images_per_s_per_round": [round(v, 2) for v in per_round],
    }


def commit() -> str | None:
    """The benchmark's git commit (``+dirty`` with uncommitted changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import TrainerSteps

    from equissl.config import build_config

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    version = lightly_version()
    with tempfile.TemporaryDirectory() as run_dir:
        config = build_config(args.config, recipe_overrides(args, run_dir))
        check_comparable(config)
        sides: dict = {"equissl": TrainerSteps(config)}
        device = sides["equissl"].trainer.accelerator.device
        if version is not None:
            sides["lightly"] = LightlySteps(
                config, sides["equissl"].trainer.dataset, device, args.lightly_forward
            )
        figures = alternate(sides, args.rounds, args.warmup, args.steps_per_round, device)
    results = {name: summary(figures[name], side.images_per_step) for name, side in sides.items()}
    out: dict = {"benchmark": "peers", "equissl": results["equissl"]}
    if version is None:
        out["lightly"] = "not installed"
        out["ratio_equissl_over_lightly"] = None
    else:
        out["lightly"] = {
            **results["lightly"],
            "version": version,
            "forward": args.lightly_forward,
            "transform": sides["lightly"].transform_kwargs,
        }
        medians = [statistics.median(figures[name]) for name in ("equissl", "lightly")]
        out["ratio_equissl_over_lightly"] = round(medians[0] / medians[1], 3)
        ratios = [e / lt for e, lt in zip(figures["equissl"], figures["lightly"], strict=True)]
        out["ratio_per_round"] = [round(r, 3) for r in ratios]
        out["ratio_median_of_rounds"] = round(statistics.median(ratios), 3)
    out["settings"] = {
        "recipe": args.config,
        "overrides": args.overrides,
        "dry": args.dry,
        "batch_size": config.trainer.batch_size,
        "image_size": config.augment.crop_size,
        "data_image_size": config.data.image_size,
        "precision": config.trainer.precision,
        "threads": torch.get_num_threads(),
        "workers": config.data.num_workers,
        "device": str(device),
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "warmup_per_round": args.warmup,
        "order": "alternating rounds, equissl first",
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "lightly": version or "not installed",
        "commit": commit(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_1_5_15_min_start": [round(v, 2) for v in load_start],
        "load_average_1_5_15_min_end": [round(v, 2) for v in os.getloadavg()],
    }
    return out


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
