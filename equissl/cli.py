"""The ``equissl`` command: pretrain | probe | knn | export | data.

Every user error (bad config key, missing data, missing checkpoint) ends with a one-line message on
stderr and exit status 2, before any work starts; a non-finite loss ends with status 3.
"""

from __future__ import annotations

import argparse
import sys

from equissl.config import ConfigError


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone with an objective; rerun to resume")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/simclr_resnet18_shapes3d.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.01 trainer.max_steps=50")
    p.add_argument("--probe", action="store_true", help="after pretraining, run the linear probe vs random init")


def _add_eval(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--run", required=True, help="run directory (holds checkpoints/)")
    p.add_argument("--checkpoint", help="a checkpoint directory; default: the newest complete one")
    p.add_argument("--compare-random", action="store_true", help="also evaluate a randomly initialised backbone")
    p.add_argument("overrides", nargs="*", help="probe.* overrides, e.g. probe.epochs=50")


def _add_export(sub) -> None:
    from equissl.export.formats import FORMATS

    p = sub.add_parser("export", help="export the backbone for downstream use")
    p.add_argument("--run", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--format", default="safetensors", choices=FORMATS)
    p.add_argument("--out", required=True, help="output file, e.g. backbone.safetensors")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    make = data_sub.add_parser("make", help="render an embedded dataset into its cache directory")
    make.add_argument("name", choices=["shapes3d"])
    make.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/tmp/shapes3d")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equissl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_eval(sub, "probe", "offline linear probe (and kNN) on frozen features")
    _add_eval(sub, "knn", "weighted kNN on frozen features")
    _add_export(sub)
    _add_data(sub)
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
        from equissl.eval.report import evaluate_run, format_report

        print(format_report(evaluate_run(result.run_dir, ("linear", "knn"), compare_random=True)))
    return 0


def cmd_eval(args, methods: tuple[str, ...]) -> int:
    from equissl.eval.report import evaluate_run, format_report

    probe_cfg = _probe_config(args.run, args.overrides)
    report = evaluate_run(args.run, methods, args.compare_random, args.checkpoint, probe_cfg)
    print(format_report(report))
    return 0


def cmd_export(args) -> int:
    from equissl.export.formats import export_run

    out = export_run(args.run, args.out, args.format, args.checkpoint)
    print(f"wrote {out} and {out}.json")
    return 0


def cmd_data(args) -> int:
    from equissl.config import build_config
    from equissl.registry import DATASETS

    config = build_config(None, [f"data.name={args.name}", *args.overrides])
    DATASETS.build(config.data.name, config.data, split="train", source="image", num_views=1, seed=0)
    print(f"{args.name} ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from equissl.launch.errors import NonFiniteLossError

    try:
        if args.command == "pretrain":
            return cmd_pretrain(args)
        if args.command == "probe":
            return cmd_eval(args, ("linear", "knn"))
        if args.command == "knn":
            return cmd_eval(args, ("knn",))
        if args.command == "export":
            return cmd_export(args)
        if args.command == "data":
            return cmd_data(args)
    except (ConfigError, ValueError) as error:
        print(f"equissl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"equissl {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    return 1


if __name__ == "__main__":
    sys.exit(main())
