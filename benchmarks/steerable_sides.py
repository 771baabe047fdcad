"""Steerable C4 / D4 nets at every input side: invariance error of the pooled features, and what the exact
downsampling costs. Prints ONE JSON object.

Invariance: for every side from ``--min-side`` to ``--max-side`` and every non-identity group element g,
``max|f(g x) - f(x)| / max|f(x)|`` of the pooled features f (eval mode, BatchNorm statistics set by a few
train-mode passes, random normal inputs), with ``exact_downsampling`` on (default) and off (the earlier
direct subsampling); the largest error over elements per side, and the largest over sides.

Cost: forward + backward images/s (train mode) at the ``--cost-sides`` with the option on and off,
measured in alternating rounds (median of the per-round ratios, as ``benchmarks/backbones.py --rounds``;
``--clock cpu --threads 1`` counts this process's CPU time, for a machine shared with other jobs);
at odd sides both compute the same function, at even sides the exact net averages 2 x 2 before each
stride-2 stage.

    python benchmarks/steerable_sides.py                           # default widths (16, 32, 64), ~minutes
    python benchmarks/steerable_sides.py --widths 4 8 8 --stem-width 4   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(group: str, exact: bool, args: argparse.Namespace):
    from equissl.backbones.steerable import SteerableResNet
    from equissl.groups import parse_group

    torch.manual_seed(0)
    return SteerableResNet(
        parse_group(group),
        stem_width=args.stem_width,
        widths=tuple(args.widths),
        depths=tuple(args.depths),
        exact_downsampling=exact,
    )


@torch.no_grad()
def invariance_errors(net, args: argparse.Namespace) -> dict[int, float]:
    """{side: largest relative change of the pooled features over the non-identity group elements}."""
    generator = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(3):  # BatchNorm running statistics away from their initialisation
        net(torch.randn(4, 3, 33, 33, generator=generator) * 2 + 0.5)
    net.eval()
    errors = {}
    for side in range(args.min_side, args.max_side + 1):
        x = torch.randn(args.batch_size, 3, side, side, generator=generator)
        reference = net(x)
        scale = reference.abs().max()
        errors[side] = max(
            float((net(net.group.transform_image(x, g)) - reference).abs().max() / scale)
            for g in range(1, net.group.order)
        )
    return errors


def images_per_s(net, side: int, args: argparse.Namespace) -> float:
    """Forward + backward images per second of wall time, or of this process's CPU time (``--clock cpu``)."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    x = torch.randn(args.batch_size, 3, side, side)
    net.train()

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()

    step()
    best = float("inf")
    for _ in range(args.repeats):
        start = clock()
        step()
        best = min(best, clock() - start)
    return args.batch_size / best


def cost(group: str, side: int, args: argparse.Namespace) -> dict:
    exact, direct = build(group, True, args), build(group, False, args)
    ratios, speeds = [], {"exact": [], "direct": []}
    for _ in range(args.rounds):
        fast, slow = images_per_s(exact, side, args), images_per_s(direct, side, args)
        speeds["exact"].append(fast)
        speeds["direct"].append(slow)
        ratios.append(fast / slow)
    return {
        "images_per_s_exact": round(statistics.median(speeds["exact"]), 1),
        "images_per_s_direct": round(statistics.median(speeds["direct"]), 1),
        "relative_speed": round(statistics.median(ratios), 3),
        "relative_speed_per_round": [round(r, 3) for r in ratios],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", nargs="+", default=["c4", "d4"])
    parser.add_argument("--stem-width", type=int, default=16)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 1, 1])
    parser.add_argument("--min-side", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cost-sides", type=int, nargs="+", default=[64, 65])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: use with --threads 1")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    for group in args.groups:
        entry: dict = {}
        for exact in (True, False):
            errors = invariance_errors(build(group, exact, args), args)
            worst = max(errors, key=errors.get)
            key = "exact_downsampling" if exact else "direct_subsampling"
            entry[key] = {
                "max_error": errors[worst],
                "at_side": worst,
                "sides_above_1e-5": [side for side, error in errors.items() if error > 1e-5],
            }
        entry["cost"] = {str(side): cost(group, side, args) for side in args.cost_sides}
        results[group] = entry
    print(
        json.dumps(
            {
                "benchmark": "steerable_sides",
                "torch": torch.__version__,
                "settings": vars(args),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
