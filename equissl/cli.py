"""The ``equissl`` command: pretraining, evaluations, export, data and launching.

Subcommands: pretrain | calibrate | probe | knn | finetune | embed | compare | export | finetune-det | data |
launch | equivariance | list | config.

Exit status (:mod:`equissl.errors`):

- 2 -- a user error (bad config key or value, missing data, missing checkpoint): one line on stderr
  naming the key or file, before any work starts;
- 3 -- a run stopped on purpose (non-finite loss, too many unreadable files, a failing data item): one
  line, the last complete checkpoint is kept;
- 130 -- interrupted (Ctrl-C): one line;
- 1 -- an internal error, a bug in equissl: the traceback and a request to report it.

Every ``key=value`` setting of every command goes through one converter,
:func:`equissl.config.parse_settings`, as strict as a recipe.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from equissl.errors import ConfigError, RunStopped, UserError

ISSUES_URL = "https://github.com/equissl/equissl/issues"


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone with an objective; rerun to resume")
    p.add_argument(
        "--config",
        required=True,
        help="a packaged recipe's name (equissl list recipes), e.g. simclr_resnet18_shapes3d, or a YAML file",
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.01 trainer.max_steps=50"
    )
    p.add_argument(
        "--probe", action="store_true", help="after pretraining, run the linear probe vs random init"
    )
    p.add_argument(
        "--override-optim",
        action="store_true",
        help="resume with changed optim.* settings (they replace the checkpoint's; refused otherwise)",
    )


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure a recipe's step time here and print the trainer.max_steps that fits a time budget",
    )
    p.add_argument("--config", required=True, help="a packaged recipe's name or a YAML file")
    p.add_argument("--minutes", type=float, required=True, help="the training-time budget, minutes")
    p.add_argument("--measure-steps", type=int, default=20, help="steps timed, after the warm-up steps")
    p.add_argument("--skip", type=int, default=3, help="warm-up steps trained but not timed")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for pretrain")


def _add_eval(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--run", required=True, help="run directory (holds checkpoints/)")
    p.add_argument(
        "--data",
        help="a labelled image folder to probe on instead of the run's data: FOLDER/train/<class>/ "
        "(and val/<class>/), or FOLDER/<class>/ with a held-out part",
    )
    if name == "probe":
        p.add_argument(
            "--protocol",
            choices=("fast", "standard"),
            default="fast",
            help="fast: AdamW on cached, unaugmented features, plus kNN (default); standard: the papers' "
            "SGD linear probe on augmented views of the frozen backbone (docs/evaluation.md)",
        )
    p.add_argument("--checkpoint", help="a checkpoint directory; default: the newest complete one")
    p.add_argument(
        "--compare-random", action="store_true", help="also evaluate a randomly initialised backbone"
    )
    p.add_argument(
        "overrides", nargs="*", help="probe.* overrides, e.g. probe.epochs=50 (LiDAR runs: the BEV probe's)"
    )


def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the whole network on a labelled fraction: pretrained vs random init"
    )
    p.add_argument("--run", required=True, help="run directory (holds checkpoints/)")
    p.add_argument("--checkpoint", help="a checkpoint directory; default: the newest complete one")
    p.add_argument(
        "--fraction",
        type=float,
        help="labelled fraction of every class's train images, e.g. 0.01, 0.1 or 1.0 (default 0.1)",
    )
    p.add_argument("--no-random", action="store_true", help="skip the random-initialisation baseline")
    p.add_argument("overrides", nargs="*", help="settings key=value, e.g. epochs=30 lr_backbone=0.01")


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="save val embeddings and draw them in 2-D coloured by class")
    p.add_argument("--run", required=True, help="run directory (holds checkpoints/)")
    p.add_argument("--checkpoint", help="a checkpoint directory; default: the newest complete one")
    p.add_argument(
        "--plot",
        choices=("umap", "tsne", "pca"),
        default="tsne",
        help="the 2-D map: tsne (scikit-learn), umap (umap-learn) or pca; default tsne",
    )
    p.add_argument("--compare-random", action="store_true", help="also embed a randomly initialised backbone")
    p.add_argument("overrides", nargs="*", help="settings key=value, e.g. max_points=2000 perplexity=50")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="every evaluation of several runs in one table, CSV and bar plot")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="compare", help="folder for compare.md, compare.csv, compare.png")


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
        "finetune-det",
        help="short Faster R-CNN fine-tune on shapes3d_det or a COCO-format set: pretrained vs random",
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
        "--data",
        default="shapes3d_det",
        help="shapes3d_det (embedded, the default) or coco:ANNOTATIONS.json:IMAGES_DIR (your own data)",
    )
    p.add_argument(
        "--val-data",
        help="with --data coco:...: a second coco:ANNOTATIONS.json:IMAGES_DIR for val; default: "
        "val_fraction of --data's images held out",
    )
    p.add_argument(
        "--cache-dir", help="where the detection set is cached; default $EQUISSL_DATA/shapes3d_det"
    )
    p.add_argument(
        "overrides", nargs="*", help="fine-tune settings key=value, e.g. iterations=100 batch_size=4"
    )


def _add_data(sub) -> None:
    from equissl.registry import DATASETS

    p = sub.add_parser("data", help="prepare datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    make = data_sub.add_parser("make", help="render an embedded dataset into its cache directory")
    embedded = [entry.name for entry in DATASETS.entries(embedded=True)]
    make.add_argument(
        "name",
        choices=sorted({*embedded, *(name.replace("_", "-") for name in embedded)}),
        help=f"{' | '.join(embedded)} (the detection set shapes3d_det is made by finetune-det)",
    )
    make.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/tmp/shapes3d")


def _add_equivariance(sub) -> None:
    p = sub.add_parser(
        "equivariance", help="measure equivariance: of a backbone (--backbone) or of a run (--run)"
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--backbone", help="registered backbone name, e.g. poly_vit_tiny, steerable_c4, timm, torchvision"
    )
    target.add_argument("--run", help="run directory of an equivariant objective (3D-rotation metrics)")
    p.add_argument("--tiny", action="store_true", help="--backbone: the small test-size configuration")
    p.add_argument("--size", type=int, default=0, help="--backbone: input side (default: the backbone's)")
    p.add_argument("--checkpoint", help="--run: a checkpoint directory; default: the newest complete one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument(
        "overrides",
        nargs="*",
        help="--run: protocol settings, e.g. max_objects=100 regression.epochs=50; --backbone: backbone.* "
        "settings, e.g. backbone.model_name=resnet18 backbone.frame=c4",
    )


def _add_launch(sub) -> None:
    from equissl.launch.launcher import add_arguments

    p = sub.add_parser(
        "launch", help="run pretrain on N processes / GPUs / nodes (torchrun) or SLURM (submitit)"
    )
    add_arguments(p)


LISTINGS = ("recipes", "backbones", "objectives", "datasets")


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="the packaged recipes, or the registered backbones, objectives, datasets")
    p.add_argument("what", choices=LISTINGS)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="show the resolved config of a recipe")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config (YAML) of a recipe and overrides")
    show.add_argument("recipe", help="a packaged recipe's name (equissl list recipes) or a YAML file")
    show.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.01")


def build_parser() -> argparse.ArgumentParser:
    from equissl import __version__

    parser = argparse.ArgumentParser(prog="equissl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"equissl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_calibrate(sub)
    _add_eval(sub, "probe", "offline linear probe (and kNN) on frozen features")
    _add_eval(sub, "knn", "weighted kNN on frozen features")
    _add_finetune(sub)
    _add_embed(sub)
    _add_compare(sub)
    _add_export(sub)
    _add_finetune_det(sub)
    _add_data(sub)
    _add_launch(sub)
    _add_equivariance(sub)
    _add_list(sub)
    _add_config(sub)
    return parser


def cmd_pretrain(args) -> int:
    from equissl.config import build_config

    config = build_config(args.config, args.overrides)  # refuses bad keys before any work
    from equissl.launch.trainer import pretrain

    result = pretrain(config, override_optim=args.override_optim)
    print(f"{result.status}: {result.run_dir} at step {result.step}")
    if args.probe and result.status != "interrupted":
        if _unlabelled(config):
            print(
                f"no probe: the data is unlabelled; probe with equissl probe --run {result.run_dir} --data FOLDER"
            )
        else:
            print(_probe_report(config, result.run_dir, None, ("linear", "knn"), True, []))
    return 0


def cmd_calibrate(args) -> int:
    import dataclasses
    import json

    from equissl.config import build_config
    from equissl.launch.budget import calibrate

    config = build_config(args.config, args.overrides)
    result = calibrate(config, args.minutes, args.measure_steps, args.skip)
    print(json.dumps({"recipe": args.config, **dataclasses.asdict(result)}))
    print(
        f"equissl pretrain --config {args.config} {' '.join(args.overrides)} {result.override}".replace(
            "  ", " "
        )
    )
    return 0


def _unlabelled(config) -> bool:
    """True when the pretraining data carries no labels (an unlabelled image folder)."""
    from equissl.build import build_dataset

    dataset = build_dataset(config, "train")
    labelled_split = getattr(dataset, "labelled_split", None)  # STL-10's unlabelled part has a labelled one
    return getattr(labelled_split() if labelled_split else dataset, "num_classes", 1) == 0


def _probe_report(
    config,
    run,
    checkpoint,
    methods: tuple[str, ...],
    compare_random: bool,
    overrides,
    data=None,
    protocol: str = "fast",
) -> str:
    """The probe that fits the run's backbone (registry data): class-label probes on pooled features, or
    the bird's-eye-view occupancy probe of LiDAR encoders; ``probe.*`` overrides apply to it."""
    from equissl.config import parse_settings
    from equissl.registry import BACKBONES

    if BACKBONES.get(config.backbone.name).meta.get("probe", "linear") == "bev":
        from equissl.eval.bev_probe import BEVProbeConfig, evaluate_bev_run
        from equissl.eval.bev_probe import format_report as format_bev

        if methods != ("linear", "knn") or protocol != "fast":
            raise ConfigError(
                f"{run} is a LiDAR run: its backbone is probed by `equissl probe` (BEV probe), without --protocol"
            )
        if data is not None:
            raise ConfigError(
                f"{run} is a LiDAR run: --data takes an image folder, the BEV probe reads the run's"
            )
        cfg = parse_settings(BEVProbeConfig, overrides, section="probe")
        return format_bev(evaluate_bev_run(run, checkpoint, compare_random=compare_random, cfg=cfg))
    from equissl.config import ProbeConfig
    from equissl.eval.linear_standard import StandardProbeConfig
    from equissl.eval.report import evaluate_run, format_report

    if protocol == "standard":
        probe_cfg = parse_settings(StandardProbeConfig, overrides, section="probe")
    else:
        probe_cfg = parse_settings(ProbeConfig, overrides, base=config.probe, section="probe")
    return format_report(
        evaluate_run(run, methods, compare_random, checkpoint, probe_cfg, protocol=protocol, data=data)
    )


def cmd_eval(args, methods: tuple[str, ...]) -> int:
    from equissl.runs import load_run

    config, _ = load_run(args.run, args.checkpoint)
    protocol = getattr(args, "protocol", "fast")
    print(
        _probe_report(
            config,
            args.run,
            args.checkpoint,
            methods,
            args.compare_random,
            args.overrides,
            data=args.data,
            protocol=protocol,
        )
    )
    return 0


def cmd_finetune(args) -> int:
    from equissl.config import parse_settings
    from equissl.eval.finetune import FinetuneConfig, finetune_run, format_finetune

    flags = [f"fraction={args.fraction}"] if args.fraction is not None else []
    flags += ["compare_random=false"] if args.no_random else []
    cfg = parse_settings(FinetuneConfig, [*args.overrides, *flags])
    print(format_finetune(finetune_run(args.run, cfg, args.checkpoint)))
    return 0


def cmd_embed(args) -> int:
    from equissl.config import parse_settings
    from equissl.eval.embed import EmbedConfig, embed_run, format_embed

    cfg = parse_settings(EmbedConfig, args.overrides)
    print(format_embed(embed_run(args.run, args.plot, cfg, args.checkpoint, args.compare_random)))
    return 0


def cmd_compare(args) -> int:
    from equissl.eval.compare import compare_runs

    result = compare_runs(args.runs, args.out)
    print(result["table"])
    print(f"wrote {result['csv']} and {result['figure']}")
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


def cmd_finetune_det(args) -> int:
    import json
    from pathlib import Path

    from equissl.config import parse_settings
    from equissl.eval.detection import (
        FinetuneDetConfig,
        finetune_compare,
        format_detection_report,
        require_pycocotools,
    )
    from equissl.eval.records import write_report

    cfg = parse_settings(FinetuneDetConfig, args.overrides)
    require_pycocotools()  # before any export or training
    if args.data != "shapes3d_det":
        from equissl.datasets.coco_det import parse_coco_spec

        parse_coco_spec(args.data)  # a wrong path is refused before the export and the fine-tune
        if args.val_data:
            parse_coco_spec(args.val_data)
    weights = args.weights
    if args.run:
        from equissl.export.formats import export_run

        weights = export_run(
            args.run, Path(args.run) / "export" / "backbone_torchvision.pth", "torchvision", args.checkpoint
        )
    report = finetune_compare(
        weights,
        cfg,
        compare_random=not args.no_random,
        cache_dir=args.cache_dir,
        data=args.data,
        val_data=args.val_data,
    )
    print(format_detection_report(report))
    if args.run:
        print(f"wrote {write_report(Path(args.run) / 'eval', dict(report, run=str(args.run)))}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


def cmd_data(args) -> int:
    """Render an embedded dataset (registry meta ``embedded``) through its factory, read as its ``source``."""
    from equissl.build import build_dataset
    from equissl.config import build_config
    from equissl.registry import DATASETS

    name = args.name.replace("-", "_")
    config = build_config(None, [f"data.name={name}", *args.overrides])
    build_dataset(config, "train", source=DATASETS.get(name).meta["source"], seed=0)
    print(f"{name} ready")
    return 0


def cmd_equivariance(args) -> int:
    import json
    from pathlib import Path

    if args.backbone:
        from equissl.eval.backbone_report import backbone_equivariance

        report = backbone_equivariance(
            args.backbone, tiny=args.tiny, seed=args.seed, overrides=args.overrides, size=args.size
        )
        text = json.dumps(report, indent=2)
    else:
        from equissl.config import parse_settings
        from equissl.eval.equivariance_report import (
            EquivarianceEvalConfig,
            evaluate_equivariance,
            format_equivariance,
        )
        from equissl.runs import load_run

        base = EquivarianceEvalConfig(probe=load_run(args.run, args.checkpoint)[0].probe)
        settings = parse_settings(EquivarianceEvalConfig, args.overrides, base=base)
        report = evaluate_equivariance(args.run, args.checkpoint, settings)
        text = format_equivariance(report)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def cmd_list(args) -> int:
    """One line per entry: its name and its description."""
    from equissl import api

    entries = getattr(api, f"list_{args.what}")()
    width = max(len(name) for name in entries)
    for name, description in entries.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_config(args) -> int:
    import yaml

    from equissl.config import build_config, to_dict

    config = build_config(args.recipe, args.overrides)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0


COMMANDS = {
    "pretrain": cmd_pretrain,
    "calibrate": cmd_calibrate,
    "probe": lambda args: cmd_eval(args, ("linear", "knn")),
    "knn": lambda args: cmd_eval(args, ("knn",)),
    "finetune": lambda args: cmd_finetune(args),
    "embed": lambda args: cmd_embed(args),
    "compare": lambda args: cmd_compare(args),
    "export": lambda args: cmd_export(args),
    "finetune-det": lambda args: cmd_finetune_det(args),
    "data": lambda args: cmd_data(args),
    "equivariance": lambda args: cmd_equivariance(args),
    "list": cmd_list,
    "config": cmd_config,
}


def _launch(args) -> int:
    from equissl.launch.launcher import main as launch_main

    return launch_main(args)


def _one_line_warnings(command: str):
    """Warnings (a damaged checkpoint skipped, files skipped...) as one line each, not file:line + source.

    Only the formatting changes, so ``warnings.catch_warnings(record=True)`` (tests, notebooks) still records
    them; the caller restores the returned previous formatter.
    """
    previous = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"equissl {command}: warning: {message}\n"

    warnings.formatwarning = one_line
    return previous


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS.get(args.command, _launch)
    previous_format = _one_line_warnings(args.command)
    try:
        return command(args)
    except UserError as error:
        print(f"equissl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        print(f"equissl {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"equissl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 (a bug: show everything, and ask for a report)
        traceback.print_exc()
        print(
            f"equissl {args.command}: internal error: this is a bug in equissl, not in your settings; "
            f"please report it at {ISSUES_URL} with the command and the traceback above",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
