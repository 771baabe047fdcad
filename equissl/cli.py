"""The ``equissl`` command: pretrain | probe | knn | export | finetune-det | data | launch | equivariance.

Every user error (bad config key, missing data, missing checkpoint) ends with a one-line message on
stderr and exit status 2, before any work starts; a non-finite loss, too many unreadable files or a failing data item end with status 3.
"""

from __future__ import annotations

import argparse
import sys

from equissl.config import ConfigError


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone with an objective; rerun to resume")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/simclr_resnet18_shapes3d.yaml")
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.01 trainer.max_steps=50"
    )
    p.add_argument(
        "--probe", action="store_true", help="after pretraining, run the linear probe vs random init"
    )


def _add_eval(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--run", required=True, help="run directory (holds checkpoints/)")
    p.add_argument("--checkpoint", help="a checkpoint directory; default: the newest complete one")
    p.add_argument(
        "--compare-random", action="store_true", help="also evaluate a randomly initialised backbone"
    )
    p.add_argument("overrides", nargs="*", help="probe.* overrides, e.g. probe.epochs=50")


def _add_export(sub) -> None:
    from equissl.export.formats import FORMATS

    p = sub.add_parser("export", help="export the backbone for downstream use (detectors, timm, onnx)")
    p.add_argument("--run", required=True, help="run directory (holds checkpoints/)")
    p.add_argument("--checkpoint", help="a checkpoint directory; default: the newest complete one")
    p.add_argument(
        "--format",
        default="safetensors",
        choices=(*FORMATS, "openpcdet"),
        help="safetensors | torchvision (.pth) | timm (.safetensors) | detectron2 (.pkl) | "
        "mmdet (.pth) | onnx (.onnx) | openpcdet (LiDAR encoders: <out>.pth and "
        "<out>.safetensors); metadata goes to <out>.json",
    )
    p.add_argument("--out", required=True, help="output file, e.g. backbone.safetensors")


def _add_finetune_det(sub) -> None:
    p = sub.add_parser(
        "finetune-det", help="short Faster R-CNN fine-tune on shapes3d_det: pretrained vs random"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="a `equissl export --format torchvision` file (.pth/.safetensors)")
    source.add_argument("--run", help="a run directory: its backbone is exported (torchvision) first")
    p.add_argument(
        "--checkpoint", help="with --run: a checkpoint directory; default: the newest complete one"
    )
    p.add_argument("--no-random", action="store_true", help="skip the random-initialisation baseline")
    p.add_argument(
        "--out", help="write the report as JSON here (with --run: default <run>/eval/detection.json)"
    )
    p.add_argument(
        "--cache-dir", help="where the detection set is cached; default $EQUISSL_DATA/shapes3d_det"
    )
    p.add_argument(
        "overrides", nargs="*", help="fine-tune settings key=value, e.g. iterations=100 batch_size=4"
    )


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    make = data_sub.add_parser("make", help="render an embedded dataset into its cache directory")
    make.add_argument(
        "name",
        choices=sorted({*DATA_MAKE, "lidar-sim"}),
        help="shapes3d | lidar_sim (the detection set shapes3d_det is made by finetune-det)",
    )
    make.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/tmp/shapes3d")


def _add_equivariance(sub) -> None:
    p = sub.add_parser(
        "equivariance", help="measure equivariance: of a backbone (--backbone) or of a run (--run)"
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--backbone", help="registered backbone name, e.g. poly_vit_tiny, steerable_c4")
    target.add_argument("--run", help="run directory of an equivariant objective (3D-rotation metrics)")
    p.add_argument("--tiny", action="store_true", help="--backbone: the small test-size configuration")
    p.add_argument("--checkpoint", help="--run: a checkpoint directory; default: the newest complete one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument(
        "overrides", nargs="*", help="--run: protocol settings, e.g. max_objects=100 regression.epochs=50"
    )


def _add_launch(sub) -> None:
    from equissl.launch.launcher import add_arguments

    p = sub.add_parser(
        "launch", help="run pretrain on N processes / GPUs / nodes (torchrun) or SLURM (submitit)"
    )
    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equissl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_eval(sub, "probe", "offline linear probe (and kNN) on frozen features")
    _add_eval(sub, "knn", "weighted kNN on frozen features")
    _add_export(sub)
    _add_finetune_det(sub)
    _add_data(sub)
    _add_launch(sub)
    _add_equivariance(sub)
    return parser


def _probe_config(run: str, overrides: list[str]):
    from equissl.config import ProbeConfig, from_dict, parse_override, set_path, to_dict
    from equissl.eval.features import load_run

    config, _ = load_run(run)
    tree = {"probe": to_dict(config)["probe"]}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "probe":
            raise ConfigError(f"override {text!r}: only probe.* keys can be set here")
        set_path(tree, keys, value)
    return from_dict(ProbeConfig, tree["probe"], "probe")


def cmd_pretrain(args) -> int:
    from equissl.config import build_config

    config = build_config(args.config, args.overrides)  # refuses bad keys before any work
    from equissl.launch.trainer import pretrain

    result = pretrain(config)
    print(f"{result.status}: {result.run_dir} at step {result.step}")
    if args.probe and result.status != "interrupted":
        if _is_lidar(config):
            _bev_probe(result.run_dir, None, compare_random=True)
        else:
            from equissl.eval.report import evaluate_run, format_report

            print(format_report(evaluate_run(result.run_dir, ("linear", "knn"), compare_random=True)))
    return 0


def _is_lidar(config) -> bool:
    return config.objective.name == "essl3d"  # the one objective fed LiDAR sweeps (view source lidar_pair)


def _bev_probe(run, checkpoint, compare_random: bool) -> None:
    """LiDAR encoders are probed on bird's-eye-view occupancy of held-out drives, not on class labels."""
    from equissl.eval.bev_probe import evaluate_bev_run
    from equissl.eval.bev_probe import format_report as format_bev

    print(format_bev(evaluate_bev_run(run, checkpoint, compare_random=compare_random)))


def cmd_eval(args, methods: tuple[str, ...]) -> int:
    from equissl.eval.features import load_run
    from equissl.eval.report import evaluate_run, format_report

    if _is_lidar(load_run(args.run)[0]):
        if args.overrides or methods != ("linear", "knn"):
            raise ConfigError(f"{args.run} is a LiDAR run: only `equissl probe` (BEV probe), without overrides")
        _bev_probe(args.run, args.checkpoint, args.compare_random)
        return 0
    probe_cfg = _probe_config(args.run, args.overrides)
    report = evaluate_run(args.run, methods, args.compare_random, args.checkpoint, probe_cfg)
    print(format_report(report))
    return 0


def cmd_export(args) -> int:
    if args.format == "openpcdet":
        from equissl.export.openpcdet import export_openpcdet_run

        paths = export_openpcdet_run(args.run, args.out, args.checkpoint)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    from equissl.export.formats import export_run

    out = export_run(args.run, args.out, args.format, args.checkpoint)
    print(f"wrote {out} and {out}.json")
    return 0


def _finetune_det_config(overrides: list[str]):
    from dataclasses import fields

    from equissl.config import parse_override
    from equissl.eval.detection import FinetuneDetConfig

    known = {f.name: f for f in fields(FinetuneDetConfig)}
    values = {}
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) != 1 or keys[0] not in known:
            raise ConfigError(f"finetune-det: unknown setting {text!r}; known: {', '.join(known)}")
        default = getattr(FinetuneDetConfig, keys[0])
        try:
            values[keys[0]] = type(default)(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"finetune-det: {text!r}: expected {type(default).__name__}") from error
    return FinetuneDetConfig(**values)


def cmd_finetune_det(args) -> int:
    import json
    from pathlib import Path

    from equissl.eval.detection import finetune_compare, format_detection_report

    cfg = _finetune_det_config(args.overrides)
    weights, out = args.weights, args.out
    if args.run:
        from equissl.export.formats import export_run

        out = out or str(Path(args.run) / "eval" / "detection.json")
        weights = export_run(
            args.run, Path(args.run) / "export" / "backbone_torchvision.pth", "torchvision", args.checkpoint
        )
    report = finetune_compare(weights, cfg, compare_random=not args.no_random, cache_dir=args.cache_dir)
    print(format_detection_report(report))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0


# `equissl data make NAME`: the view source each embedded dataset is read with once it is rendered.
DATA_MAKE = {"shapes3d": "image", "lidar_sim": "lidar_pair"}


def cmd_data(args) -> int:
    name = args.name.replace("-", "_")
    from equissl.config import build_config
    from equissl.registry import DATASETS

    config = build_config(None, [f"data.name={name}", *args.overrides])
    DATASETS.build(config.data.name, config.data, split="train", source=DATA_MAKE[name], num_views=1, seed=0)
    print(f"{name} ready")
    return 0


def cmd_equivariance(args) -> int:
    import json
    from pathlib import Path

    if args.backbone:
        from equissl.eval.backbone_report import backbone_equivariance

        report = backbone_equivariance(args.backbone, tiny=args.tiny, seed=args.seed)
        text = json.dumps(report, indent=2)
    else:
        from equissl.eval.equivariance_report import (
            evaluate_equivariance,
            format_equivariance,
            settings_from_overrides,
        )
        from equissl.eval.features import load_run

        settings = settings_from_overrides(args.overrides, load_run(args.run, args.checkpoint)[0].probe)
        report = evaluate_equivariance(args.run, args.checkpoint, settings)
        text = format_equivariance(report)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from equissl.errors import BadDataError, DataItemError, NonFiniteLossError

    try:
        if args.command == "pretrain":
            return cmd_pretrain(args)
        if args.command == "probe":
            return cmd_eval(args, ("linear", "knn"))
        if args.command == "knn":
            return cmd_eval(args, ("knn",))
        if args.command == "export":
            return cmd_export(args)
        if args.command == "finetune-det":
            return cmd_finetune_det(args)
        if args.command == "data":
            return cmd_data(args)
        if args.command == "launch":
            from equissl.launch.launcher import main as launch_main

            return launch_main(args)
        if args.command == "equivariance":
            return cmd_equivariance(args)
    except (ConfigError, ValueError) as error:
        print(f"equissl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, BadDataError, DataItemError, FloatingPointError) as error:
        print(f"equissl {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    return 1


if __name__ == "__main__":
    sys.exit(main())
