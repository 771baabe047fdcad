"""Throughput and peak memory of the equivariant backbones beside their plain counterparts.

Prints ONE JSON object. Each model is measured in its own child process (forked on CPU, spawned on
CUDA) so that peak memory is its own: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of
the peak resident set size (``resource.getrusage``) over the RSS after the model and its input were
built. Images/s counts forward + backward (sum of outputs) on one batch (train mode), after warm-up,
median over timed repeats. ``relative_speed`` = images/s of the equivariant model / images/s of the
counterpart. On a shared CPU the figures are noisy: compare within one run, and pin ``--threads``;
``--rounds R`` measures every entry R times in alternation (entry by entry, round after round) and reports
the median images/s and the median of the per-round ratios, which a load that changes during the run
moves far less than one sequential pass. On a machine shared with other jobs ``--clock cpu --threads 1``
counts images per second of this process's CPU time instead of wall time, which the other jobs hardly move.

Pairs (same input size, same batch):
- ``poly_vit_<size>``      vs ``timm_vit_<size>`` (timm VisionTransformer, same dims, learned pos. embed.)
- ``steerable_c4/d4/c8``  vs ``plain_cnn_for_<name>`` (torchvision BasicBlock ResNet with widths
                              scaled by sqrt(|G|), about the same parameter count) and the exported plain
                              network (``<name>_exported``: same function, |G| times the parameters)
- ``capsnet_resnet18``     vs ``resnet18`` (torchvision, same stem)

    python benchmarks/backbones.py                       # small CPU defaults, ~1-2 min
    python benchmarks/backbones.py --families steerable --groups c4 d4 --rounds 5 --repeats 5 --threads 2
    python benchmarks/backbones.py --families steerable --groups c4 d4 --rounds 5 --clock cpu --threads 1
    python benchmarks/backbones.py --image-size 224 --batch-size 64 --vit-size small --patch-size 16 \
        --steerable-size 65 --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn

# Allow ``python benchmarks/backbones.py`` from the repository root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


FAMILIES = ("vit", "steerable", "capsnet")


def plain_cnn(widths: tuple[int, ...], depths: tuple[int, ...], stem_width: int) -> nn.Module:
    """A torchvision-BasicBlock ResNet with the given channel widths (stage i > 0 has stride 2)."""
    from torchvision.models.resnet import BasicBlock

    layers: list[nn.Module] = [
        nn.Conv2d(3, stem_width, 3, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
    ]
    inplanes = stem_width
    for i, (width, depth) in enumerate(zip(widths, depths)):
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width)
                )
            layers.append(BasicBlock(inplanes, width, stride, downsample))
            inplanes = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def build(name: str, args: argparse.Namespace) -> tuple[nn.Module, int]:
    """Model and its input side for a benchmark entry."""
    from equissl.backbones.capsules import CapsNetConfig
    from equissl.backbones.poly_vit import SIZES, PolyViTConfig
    from equissl.backbones.resnet import ResNetConfig
    from equissl.backbones.steerable import SteerableConfig
    from equissl.groups import parse_group
    from equissl.registry import BACKBONES

    size = args.image_size
    if name.startswith("poly_vit_"):
        cfg = PolyViTConfig(name=name, img_size=size, patch_size=args.patch_size)
        return BACKBONES.build(name, cfg), size
    if name.startswith("timm_vit_"):
        from timm.models.vision_transformer import VisionTransformer

        dims = SIZES[name.removeprefix("timm_vit_")]
        return VisionTransformer(img_size=size, patch_size=args.patch_size, num_classes=0, **dims), size
    steerable = SteerableConfig(
        widths=tuple(args.steerable_widths),
        depths=tuple(args.steerable_depths),
        stem_width=args.steerable_widths[0],
    )
    if name.startswith("steerable_"):
        model = BACKBONES.build(name.removesuffix("_exported"), steerable)
        return (model.eval().export() if name.endswith("_exported") else model), args.steerable_size
    if name.startswith("plain_cnn_for_"):
        order = parse_group(name.removeprefix("plain_cnn_for_steerable_")).order
        scale = math.sqrt(order)  # equal parameter count: k*k*C_in*C_out*|G| = k*k*(s C_in)(s C_out)
        widths = tuple(round(w * scale) for w in steerable.widths)
        return plain_cnn(widths, steerable.depths, round(steerable.stem_width * scale)), args.steerable_size
    if name == "capsnet_resnet18":
        return BACKBONES.build(name, CapsNetConfig(name=name, stem=args.resnet_stem)), size
    if name == "resnet18":
        return BACKBONES.build(name, ResNetConfig(name=name, stem=args.resnet_stem)), size
    raise ValueError(f"unknown benchmark entry {name!r}")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(name: str, args: argparse.Namespace) -> dict:
    """Runs in the child process: build, warm up, time forward + backward, report memory."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, side = build(name, args)
    model = model.to(device).train()
    x = torch.randn(args.batch_size, 3, side, side, device=device)
    params = sum(p.numel() for p in model.parameters())
    cuda = device.type == "cuda"
    # "cpu": this process's CPU time, which other jobs on a shared machine hardly change (use --threads 1:
    # with more threads it also counts their spin-waiting)
    clock = time.process_time if args.clock == "cpu" and not cuda else time.perf_counter
    baseline_rss = current_rss_mb()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = clock()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(clock() - start)
    result = {
        "params": params,
        "input": [args.batch_size, 3, side, side],
        "images_per_s": round(args.batch_size / statistics.median(times), 2),
        "clock": "process CPU time" if clock is time.process_time else "wall",
    }
    if cuda:
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["memory_source"] = "torch.cuda.max_memory_allocated"
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        result["peak_memory_mb"] = round(peak_rss - baseline_rss, 1)
        result["memory_source"] = "peak RSS growth over RSS after build (resource.getrusage)"
    return result


def entries(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(model, its plain counterpart or '') in print order, for the families in ``args.families``."""
    out = []
    if "vit" in args.families:
        out += [(f"poly_vit_{args.vit_size}", ""), (f"timm_vit_{args.vit_size}", f"poly_vit_{args.vit_size}")]
    if "steerable" in args.families:
        for group in args.groups:
            name = f"steerable_{group}"
            out += [(name, ""), (f"plain_cnn_for_{name}", name), (f"{name}_exported", name)]
    if "capsnet" in args.families:
        out += [("capsnet_resnet18", ""), ("resnet18", "capsnet_resnet18")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32, help="ViT and ResNet input side")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--vit-size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--steerable-size", type=int, default=33, help="odd: (S-1) %% 2**stages == 0")
    parser.add_argument("--steerable-widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--steerable-depths", type=int, nargs="+", default=[1, 1, 1])
    parser.add_argument("--groups", nargs="+", default=["c4", "d4", "c8"])
    parser.add_argument("--resnet-stem", default="strided", choices=["imagenet", "cifar", "strided"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating passes over all entries")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: images per CPU-second (use --threads 1)",
    )
    parser.add_argument(
        "--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="which pairs to measure"
    )
    args = parser.parse_args()

    # Fork keeps the imports (seconds each) out of every measurement; CUDA cannot be forked.
    context = multiprocessing.get_context("spawn" if args.device.startswith("cuda") else "fork")
    pairs = entries(args)
    rounds = [{name: run_child(context, name, args) for name, _ in pairs} for _ in range(max(1, args.rounds))]
    results = combine_rounds(rounds, pairs)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        json.dumps(
            {
                "benchmark": "backbones",
                "device": device_name,
                "torch": torch.__version__,
                "settings": vars(args),
                "results": results,
            }
        )
    )


def combine_rounds(rounds: list[dict[str, dict]], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """One result per entry from R rounds: the first round's fields, the median images/s, and for each
    model with a counterpart ``relative_speed`` = the median over rounds of (counterpart images/s / model
    images/s) measured in the same round (``per_round`` lists them when R > 1)."""
    results = {name: dict(rounds[0][name]) for name, _ in pairs}
    for name, counterpart in pairs:
        speeds = [r[name]["images_per_s"] for r in rounds if "images_per_s" in r[name]]
        if speeds:
            results[name]["images_per_s"] = round(statistics.median(speeds), 2)
        if not counterpart:
            continue
        results[name]["counterpart_of"] = counterpart
        ratios = [
            r[counterpart]["images_per_s"] / r[name]["images_per_s"]
            for r in rounds
            if "images_per_s" in r[name] and "images_per_s" in r.get(counterpart, {})
        ]
        if ratios:
            relative = results[counterpart].setdefault("relative_speed", {})
            relative[name] = round(statistics.median(ratios), 3)
            if len(ratios) > 1:
                results[counterpart].setdefault("relative_speed_per_round", {})[name] = [
                    round(value, 3) for value in ratios
                ]
    return results


def _child(name: str, args: argparse.Namespace, conn) -> None:
    try:
        conn.send(measure(name, args))
    except Exception as error:  # noqa: BLE001 -- reported in the JSON, the other entries still run
        conn.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        conn.close()


def run_child(context, name: str, args: argparse.Namespace) -> dict:
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(name, args, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = {"error": "child process died"}
    process.join()
    if process.exitcode and "error" not in result:
        result["error"] = f"exit code {process.exitcode}"
    return result


if __name__ == "__main__":
    main()
