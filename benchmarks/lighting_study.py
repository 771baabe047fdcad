"""Fixed- against varied-lighting shapes3d: seq-JEPA, SIE, EquiCaps and SimCLR on two renders (issue 22),
and CARE against SimCLR at equal wall time. Runs the real commands and prints ONE JSON object.

``--study lighting`` (default): 8 trainings, each method at the 2x budget of
docs/reports/2026-12-02-equivariant-objectives-2x.md (bf16, 3DIEBench's poses, 1,000 training objects), on
the default render (``data.lighting=varied``) and on the fixed-lighting one (``data.lighting=fixed``), then
``equissl equivariance`` on each. Per run: steps, the training wall time (the run's own clock) and the
command's, the encoder's rotation R^2 (``equi`` part; ``full`` for SimCLR), top-1 of every part, and the
predictor's MRR beside MRR_shuffled (one-view queries against online encodings; for seq-JEPA also as
trained, 3-view queries against the EMA target's encodings).

``--study care``: SimCLR's recipe (900 steps), then CARE's recipe and CARE with equivariance weight 0
for the same training wall time (their step count from ``equissl calibrate``: CARE's median step time over
30 steps after 3 warm-up steps plus its checkpoint writes, amortised, with the warm-up's excess paid once,
so that the learning-rate schedule spans the run); linear / kNN top-1 from ``--probe``, and the
equivariance loss (``loss/equi`` of metrics.jsonl) at the start, middle and end of training.

    python benchmarks/lighting_study.py --dry-run             # the commands, nothing run
    python benchmarks/lighting_study.py                       # hours on 2 CPU cores; renders first
    python benchmarks/lighting_study.py --study care
    python benchmarks/lighting_study.py --tiny --data-dir /tmp/s3d --runs-dir /tmp/runs   # a smoke run
    python benchmarks/lighting_study.py trainer.precision=fp32 --methods seqjepa simclr_obj   # no native bf16

``key=value`` overrides (before the options, or after ``--``) reach every ``pretrain`` command, after the
study's own, so they win.

``--tiny`` replaces the data by a 10-class render of 2 + 1 objects of 4 views at 32 px, the budgets by 2
steps of 8 and the evaluation by a few epochs: it checks the pipeline end to end, its figures mean
nothing. ``--data-dir`` sets ``EQUISSL_DATA`` (where the renders are cached) for every command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# 3DIEBench's poses and 1,000 training objects, as the SIE / seq-JEPA / EquiCaps shapes3d recipes
SHAPES = ["data.rotations=3diebench", "data.objects_per_class=100", "data.val_objects_per_class=20"]
LIGHTINGS = ("varied", "fixed")
# method -> (recipe, overrides, steps at the 2x budget, representation part whose R^2 is "the encoder's")
METHODS = {
    "seqjepa": ("seqjepa_resnet18_shapes3d", ["trainer.precision=bf16"], 1010, "equi"),
    "sie": ("sie_resnet18_shapes3d", ["trainer.precision=bf16"], 806, "equi"),
    "equicaps": ("equicaps_resnet18_shapes3d", ["trainer.precision=bf16"], 830, "equi"),
    "simclr_obj": (
        "simclr_resnet18_shapes3d",
        [*SHAPES, "objective.views=object", "augment.object_views=none"],
        2112,
        "full",
    ),
}
TINY_DATA = [
    "data.objects_per_class=2",
    "data.val_objects_per_class=1",
    "data.views_per_object=4",
    "data.render_size=32",
    "data.image_size=32",
    "data.num_workers=0",
    "augment.crop_size=32",
    "augment.small_crop_size=16",
    "backbone.stem=strided",
    "trainer.batch_size=8",
    "trainer.checkpoint_every=2",
    "trainer.progress=false",
]
TINY_EVAL = [
    "regression.epochs=2",
    "regression.hidden_dims=[8]",
    "probe.epochs=2",
    "probe.weight_decays=[0.0]",
    "num_workers=0",
]


def equissl(*args: str) -> list[str]:
    """The ``equissl`` command run by this interpreter (``.venv/bin/equissl`` in the docs)."""
    return [sys.executable, "-m", "equissl.cli", *args]


def shown(command: list[str]) -> str:
    return shlex.join([".venv/bin/equissl", *command[3:]])


def timed(
    command: list[str], env: dict, dry_run: bool, **how
) -> tuple[float, subprocess.CompletedProcess | None]:
    """Print ``command``, then run it from the repository root (``how``: :func:`subprocess.run`'s keywords);
    returns its wall time in seconds and its result ((0, None) when dry)."""
    print(f"$ {shown(command)}", file=sys.stderr, flush=True)
    if dry_run:
        return 0.0, None
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, check=True, **how)
    return round(time.perf_counter() - start, 1), done


def run(command: list[str], env: dict, dry_run: bool) -> float:
    """Run ``command``, its output streamed to stderr; returns its wall time in seconds (0 when dry)."""
    return timed(command, env, dry_run, stdout=sys.stderr)[0]


def run_json(command: list[str], env: dict, dry_run: bool) -> tuple[float, dict]:
    """Run ``command`` like :func:`run`, and parse the last line of its stdout that is a JSON object ({}
    when dry): the run's own log lines come before it, and go to stderr once it has finished."""
    seconds, done = timed(command, env, dry_run, stdout=subprocess.PIPE, text=True)
    if done is None:
        return seconds, {}
    sys.stderr.write(done.stdout)
    objects = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return seconds, json.loads(objects[-1])


def trained_seconds(run_dir: Path) -> dict:
    """Steps and training wall time from the run's newest complete checkpoint."""
    from equissl.launch.checkpoint import latest_checkpoint, load_trainer_state

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return {}
    state = load_trainer_state(checkpoint)
    return {"steps": state.step, "train_seconds": round(state.elapsed_seconds, 1)}


def headline(report: dict, part: str) -> dict:
    """The figures the study's table shows, from an ``equissl equivariance`` report."""
    results = report["results"]
    out = {
        "encoder_part": part,
        "rotation_r2": results["rotation_r2"].get(part, {}).get("r2"),
        "rotation_r2_by_part": {key: value["r2"] for key, value in results["rotation_r2"].items()},
        "top1_by_part": results["classification_top1"],
    }
    for key in ("prediction", "prediction_target"):
        block = results.get(key)
        if block:
            out[key] = {
                split: {k: block[split][k] for k in ("MRR", "MRR_shuffled", "PRE")} for split in block
            }
    return out


def render_arguments(lighting: str, tiny: bool = False) -> list[str]:
    """The data settings of every run on ``lighting`` (``equissl data make shapes3d`` renders them first, so
    that no training's clock includes the render)."""
    return [f"data.lighting={lighting}", *SHAPES, *(TINY_DATA[:6] if tiny else [])]


def pretrain_arguments(
    method: str, lighting: str, run_dir: Path, tiny: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """``equissl pretrain`` arguments of one training of the lighting study; ``extra`` overrides come last."""
    recipe, overrides, steps, _ = METHODS[method]
    budget = ["trainer.max_steps=2", *TINY_DATA] if tiny else []
    return [
        "pretrain",
        "--config",
        recipe,
        *overrides,
        f"trainer.max_steps={steps}",
        f"data.lighting={lighting}",
        *budget,
        f"name={run_dir.name}",
        f"trainer.run_dir={run_dir}",
        *extra,
    ]


def lighting_study(args, env: dict) -> dict:
    runs: dict[str, dict] = {}
    for lighting in args.lightings:
        render_seconds = run(
            equissl("data", "make", "shapes3d", *render_arguments(lighting, args.tiny)), env, args.dry_run
        )
        runs[f"render_{lighting}"] = {"command_seconds": render_seconds}
        for method in args.methods:
            run_dir = Path(args.runs_dir) / f"{method}_{lighting}_2x"
            command = equissl(*pretrain_arguments(method, lighting, run_dir, args.tiny, args.overrides))
            entry = {"method": method, "lighting": lighting, "pretrain_command": shown(command)}
            entry["pretrain_command_seconds"] = run(command, env, args.dry_run)
            entry.update(trained_seconds(run_dir) if not args.dry_run else {})
            out = run_dir / "eval" / "equivariance.json"
            quick = TINY_EVAL if args.tiny else []
            evaluate = equissl("equivariance", "--run", str(run_dir), "--out", str(out), *quick)
            entry["equivariance_command"] = shown(evaluate)
            entry["equivariance_command_seconds"] = run(evaluate, env, args.dry_run)
            if not args.dry_run:
                entry.update(headline(json.loads(out.read_text()), METHODS[method][3]))
            runs[run_dir.name] = entry
    return runs


def equi_loss_trajectory(run_dir: Path) -> dict:
    """``loss/equi`` and ``loss/nt_xent`` of metrics.jsonl at the first, middle and last logged step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "loss/equi" in row]
    if not rows:
        return {}
    picks = {"first": rows[0], "middle": rows[len(rows) // 2], "last": rows[-1]}
    return {
        where: {key: row.get(key) for key in ("step", "loss/equi", "loss/nt_xent")}
        for where, row in picks.items()
    }


def probe_scores(run_dir: Path) -> dict:
    """Linear / kNN top-1 (%) that ``--probe`` saved in ``eval/probe_fast.json`` (pretrained, random init)."""
    path = run_dir / "eval" / "probe_fast.json"
    return json.loads(path.read_text())["results"] if path.is_file() else {}


CARE_RECIPE = "care_resnet18_shapes3d"
CALIBRATION_STEPS = 30


def care_study(args, env: dict) -> dict:
    """SimCLR's recipe, then CARE and CARE at weight 0 for the same training time: their step count is
    SimCLR's training seconds times CARE's steps per second, measured by a short calibration run (so the
    learning-rate schedule spans the run), with ``trainer.max_minutes`` as a guard."""
    runs: dict[str, dict] = {}
    tiny = ["trainer.max_steps=2", *TINY_DATA, "data.lighting=varied"] if args.tiny else []
    probe = ["probe.epochs=2", "probe.weight_decays=[0.0]"] if args.tiny else []
    simclr_dir = Path(args.runs_dir) / "care_study_simclr"
    command = equissl(
        "pretrain",
        "--config",
        "simclr_resnet18_shapes3d",
        "--probe",
        *tiny,
        "name=care_study_simclr",
        f"trainer.run_dir={simclr_dir}",
        *probe,
        *args.overrides,
    )
    runs["simclr"] = {"command": shown(command), "command_seconds": run(command, env, args.dry_run)}
    if not args.dry_run:
        runs["simclr"].update({**trained_seconds(simclr_dir), "top1": probe_scores(simclr_dir)})
    seconds = runs["simclr"].get("train_seconds", 60.0)
    measure, skip = (2, 1) if args.tiny else (CALIBRATION_STEPS, 3)
    calibration = equissl(
        "calibrate",
        "--config",
        CARE_RECIPE,
        "--minutes",
        f"{seconds / 60:.4f}",
        "--measure-steps",
        str(measure),
        "--skip",
        str(skip),
        *tiny,
        *args.overrides,
    )
    command_seconds, measured = run_json(calibration, env, args.dry_run)
    runs["calibration"] = {"command": shown(calibration), "command_seconds": command_seconds, **measured}
    steps = max(1, int(measured.get("max_steps", 600)))
    for name, extra in (("care", []), ("care_weight0", ["objective.equivariance_weight=0"])):
        run_dir = Path(args.runs_dir) / f"care_study_{name}"
        command = equissl(
            "pretrain",
            "--config",
            CARE_RECIPE,
            "--probe",
            *extra,
            f"trainer.max_steps={steps}",
            f"trainer.max_minutes={1.1 * seconds / 60:.2f}",
            *tiny,
            f"name=care_study_{name}",
            f"trainer.run_dir={run_dir}",
            *probe,
            *args.overrides,
        )
        entry = {"command": shown(command), "command_seconds": run(command, env, args.dry_run)}
        if not args.dry_run:
            entry.update(trained_seconds(run_dir))
            entry["top1"] = probe_scores(run_dir)
            entry["equivariance_loss"] = equi_loss_trajectory(run_dir)
        runs[name] = entry
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=["lighting", "care"], default="lighting")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--lightings", nargs="+", choices=LIGHTINGS, default=list(LIGHTINGS))
    parser.add_argument("--runs-dir", default="runs/lighting_study")
    parser.add_argument("--data-dir", default="", help="EQUISSL_DATA for every command (render cache)")
    parser.add_argument("--tiny", action="store_true", help="a minutes-long smoke run (figures meaningless)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "overrides", nargs="*", help="key=value for every pretrain, e.g. trainer.precision=fp32"
    )
    args = parser.parse_args()
    env = dict(os.environ)
    if args.data_dir:
        env["EQUISSL_DATA"] = str(Path(args.data_dir).resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    runs = lighting_study(args, env) if args.study == "lighting" else care_study(args, env)
    print(
        json.dumps(
            {
                "benchmark": f"{args.study}_study",
                "tiny": args.tiny,
                "dry_run": args.dry_run,
                "seconds": round(time.perf_counter() - start, 1),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
