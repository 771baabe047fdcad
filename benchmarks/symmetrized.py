"""Throughput of timm / torchvision backbones bare, frame-averaged and canonicalized; and, with ``--probe``,
the shapes3d linear probe of one of them pretrained each way. Prints ONE JSON object.

Throughput: images/s of forward + backward (sum of the pooled features) in train mode on one batch,
median over ``--repeats`` rounds after ``--warmup``. The variants of one backbone are timed in
*alternating* rounds (bare, frame c4, frame d4, canonicalizer c4, ... then again), so that the ratios
to the bare model (``relative_to_bare``) are measured under the same machine load; on a shared CPU trust
the ratios more than the absolute figures, and pin ``--threads``.

Probe (``--probe``): SimCLR on the embedded shapes3d renders (``simclr_resnet18_shapes3d``)
with ``--probe-backbone`` bare, with ``frame=c4`` and with ``canonicalizer=c4``, each for
``--probe-steps`` optimizer steps, then ``equissl probe``'s protocol (linear probe and kNN on held-out
objects, random init beside).

    python benchmarks/symmetrized.py                                  # throughput, CPU defaults
    python benchmarks/symmetrized.py --probe --probe-steps 300 --out-dir /tmp/sym   # + shapes3d probe
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

# Allow ``python benchmarks/symmetrized.py`` from the repository root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BACKBONES = {
    "timm convnext_atto": "{name: timm, model_name: convnext_atto}",
    "timm vit_tiny_patch16_224 (img_size 64)": "{name: timm, model_name: vit_tiny_patch16_224, kwargs: {img_size: 64}}",
    "timm resnet18": "{name: timm, model_name: resnet18}",
    "torchvision mobilenet_v3_small": "{name: torchvision, model_name: mobilenet_v3_small}",
}
VARIANTS = {
    "bare": [],
    "frame c4": ["backbone.frame=c4"],
    "frame d4": ["backbone.frame=d4"],
    "canonicalizer c4": ["backbone.canonicalizer=c4"],
    "canonicalizer c8": ["backbone.canonicalizer=c8"],
}


def build(backbone: str, variant: list[str], image_size: int):
    from equissl.build import build_backbone
    from equissl.config import build_config

    config = build_config(None, [f"backbone={backbone}", *variant, f"data.image_size={image_size}"])
    torch.manual_seed(0)
    return build_backbone(config).train()


def throughput(args: argparse.Namespace) -> dict:
    results: dict[str, dict] = {}
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    for label, backbone in BACKBONES.items():
        if args.backbones and label.split()[1] not in args.backbones:
            continue
        models = {name: build(backbone, overrides, args.image_size) for name, overrides in VARIANTS.items()}

        def step(model) -> float:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            model(x).sum().backward()
            return time.perf_counter() - start

        for model in models.values():
            for _ in range(args.warmup):
                step(model)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):  # alternating rounds: every variant sees the same load
            for name, model in models.items():
                times[name].append(step(model))
        speed = {name: args.batch_size / statistics.median(values) for name, values in times.items()}
        results[label] = {
            "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
            "images_per_s": {name: round(value, 1) for name, value in speed.items()},
            "relative_to_bare": {name: round(value / speed["bare"], 3) for name, value in speed.items()},
        }
    return results


def probe(args: argparse.Namespace) -> dict:
    from equissl.config import build_config
    from equissl.eval.report import evaluate_run
    from equissl.launch.trainer import pretrain

    backbone = BACKBONES[args.probe_backbone]
    results = {}
    for name in ("bare", "frame c4", "canonicalizer c4"):
        run_dir = os.path.join(args.out_dir, name.replace(" ", "_"))
        overrides = [
            f"backbone={backbone}",
            *VARIANTS[name],
            f"trainer.max_steps={args.probe_steps}",
            f"trainer.run_dir={run_dir}",
            "trainer.progress=false",
            f"trainer.precision={args.precision}",
            f"trainer.checkpoint_every={args.probe_steps}",
            *args.probe_overrides,
        ]
        config = build_config("simclr_resnet18_shapes3d", overrides)
        # The run's log lines go to stderr so that stdout stays one JSON object.
        with contextlib.redirect_stdout(sys.stderr):
            start = time.perf_counter()
            pretrain(config)
            minutes = (time.perf_counter() - start) / 60
            report = evaluate_run(run_dir, ("linear", "knn"), name == "bare", None, config.probe)
        results[name] = {"pretrain_minutes": round(minutes, 2), **report["results"]}
    return {"backbone": args.probe_backbone, "steps": args.probe_steps, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--backbones", nargs="*", default=[], help="model names to keep, e.g. convnext_atto")
    parser.add_argument("--probe", action="store_true", help="also pretrain and probe on shapes3d")
    parser.add_argument("--probe-backbone", default="timm resnet18", choices=list(BACKBONES))
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--probe-overrides", nargs="*", default=[], help="more key=value for the probe runs")
    parser.add_argument("--out-dir", default="runs/symmetrized")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "benchmark": "symmetrized",
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": vars(args),
    }
    if not args.skip_throughput:
        report["throughput"] = throughput(args)
    if args.probe:
        report["probe"] = probe(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
