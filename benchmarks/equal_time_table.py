"""Every base method, and E-SSL on each base, at equal wall time on shapes3d: linear and kNN top-1 (and
E-SSL's rotation accuracy), with the steps each got and its training time. Prints one JSON object per run
as it finishes, then the whole table as one JSON object and as Markdown (for docs/objectives.md).

Each run is calibrated first (:mod:`equissl.launch.budget`: a short measured run, then
``trainer.max_steps = minutes * 60 / seconds per step``), so every method trains its whole schedule in
about ``--minutes``; then pretrained and probed (linear + kNN on held-out objects, and random init once).
Runs alternate base, E-SSL on that base, next base..., so that a change in the machine's load spreads over
the methods rather than falling on one.

    python benchmarks/equal_time_table.py --minutes 6 --out runs/equal_time
    python benchmarks/equal_time_table.py --minutes 2 --bases simclr dino --no-essl \
        data.image_size=32 dino:objective.local_crop_size=16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BASES = ("simclr", "vicreg", "byol", "simsiam", "barlowtwins", "mocov3", "dino")
# E-SSL on a base: the base's recipe plus the rotation term of the essl recipe (its head and crop range)
ESSL_OVERRIDES = ["objective.rotation_hidden_dims=[512,512]", "augment.small_crop_scale=[0.2,1.0]"]


def recipe(base: str) -> str:
    return f"{base}_resnet18_shapes3d"


def overrides_for(base: str, overrides: Sequence[str]) -> list[str]:
    """The overrides a base's runs (and its E-SSL run) get: every plain ``key=value``, and the
    ``BASE:key=value`` ones of this base without their prefix (keys only one recipe has, such as DINO's
    ``objective.local_crop_size``)."""
    chosen = []
    for override in overrides:
        prefix, _, rest = override.partition(":")
        if prefix in BASES:
            if prefix == base:
                chosen.append(rest)
        else:
            chosen.append(override)
    return chosen


def runs(bases: list[str], essl: bool, overrides: Sequence[str] = ()) -> list[tuple[str, str, list[str]]]:
    """(label, recipe, overrides) in the order they run."""
    order = []
    for base in bases:
        common = overrides_for(base, overrides)
        order.append((base, recipe(base), common))
        if essl:
            order.append(
                (
                    f"essl/{base}",
                    recipe(base),
                    [*common, "objective.name=essl", f"objective.base={base}", *ESSL_OVERRIDES],
                )
            )
    return order


def train_and_probe(
    label: str,
    name: str,
    overrides: list[str],
    minutes: float,
    measure: int,
    out: Path,
    first: bool,
    steps: int = 0,
) -> dict:
    from equissl.config import build_config
    from equissl.eval.report import evaluate_run
    from equissl.launch.budget import calibrate
    from equissl.launch.trainer import pretrain

    run_dir = out / label.replace("/", "_")
    base = [*overrides, f"trainer.run_dir={run_dir}", "trainer.progress=false"]
    # The runs' log lines go to stderr so that stdout holds only the JSON rows and the table.
    with contextlib.redirect_stdout(sys.stderr):
        if steps:  # a screening run: a fixed step count instead of a calibrated one
            calibration = None
            config = build_config(name, [*base, f"trainer.max_steps={steps}"])
        else:
            calibration = calibrate(build_config(name, base), minutes, measure)
            config = build_config(name, [*base, calibration.override])
        start = time.perf_counter()
        result = pretrain(config)
        seconds = time.perf_counter() - start
        report = evaluate_run(run_dir, ("linear", "knn"), compare_random=first)
    row = {
        "run": label,
        "recipe": name,
        "overrides": overrides,
        "steps": result.step,
        "train_seconds": round(seconds, 1),
        "calibrated_seconds_per_step": calibration and round(calibration.seconds_per_step, 4),
        "linear": report["results"]["pretrained"].get("linear"),
        "knn": report["results"]["pretrained"].get("knn"),
        "rotation_acc": (report.get("objective_metrics_val") or {}).get("rotation_acc"),
    }
    if first:
        row["random_init"] = report["results"]["random init"]
    return row


def markdown(rows: list[dict], random_init: dict | None) -> str:
    lines = [
        "| run | steps | train time (s) | linear top-1 | kNN top-1 | rotation acc (E-SSL) |",
        "|---|---|---|---|---|---|",
    ]
    if random_init:
        lines.append(f"| random init | 0 | 0 | {random_init['linear']:.1f} | {random_init['knn']:.1f} | |")
    for row in rows:
        rotation = "" if row["rotation_acc"] is None else f"{row['rotation_acc']:.1f}"
        lines.append(
            f"| {row['run']} | {row['steps']} | {row['train_seconds']:.0f} | {row['linear']:.1f} | {row['knn']:.1f} | {rotation} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training time per run")
    parser.add_argument("--measure-steps", type=int, default=20)
    parser.add_argument(
        "--steps", type=int, default=0, help="train every run this many steps instead of calibrating"
    )
    parser.add_argument("--bases", nargs="*", default=list(BASES), choices=BASES)
    parser.add_argument("--no-essl", action="store_true", help="only the base methods")
    parser.add_argument("--no-random-init", action="store_true", help="skip probing random init")
    parser.add_argument("--out", default="runs/equal_time")
    parser.add_argument(
        "overrides", nargs="*", help="key=value for every run; BASE:key=value for one base's runs only"
    )
    args = parser.parse_args()
    out = Path(args.out)
    rows, random_init = [], None
    for k, (label, name, overrides) in enumerate(runs(args.bases, not args.no_essl, args.overrides)):
        row = train_and_probe(
            label,
            name,
            overrides,
            args.minutes,
            args.measure_steps,
            out,
            k == 0 and not args.no_random_init,
            args.steps,
        )
        random_init = row.pop("random_init", random_init)
        rows.append(row)
        print(json.dumps(row), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    summary = {
        "minutes": None if args.steps else args.minutes,
        "steps": args.steps or None,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "random_init": random_init,
        "rows": rows,
    }
    print(json.dumps(summary))
    print(markdown(rows, random_init))


if __name__ == "__main__":
    main()
