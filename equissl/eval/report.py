"""``equissl probe`` / ``equissl knn``: evaluate a run's frozen backbone, optionally beside a randomly
initialised one of the same architecture, print and save the figures; on the run's own data or, with
``data`` (``--data FOLDER``), on a labelled image folder (a run pretrained on unlabelled images).

Two linear protocols (docs/evaluation.md): ``fast`` -- AdamW on cached, unaugmented, standardised
features with a weight-decay grid (:mod:`equissl.eval.linear_probe`), plus the kNN; ``standard`` -- the
papers' SGD probe on augmented views of the frozen backbone (:mod:`equissl.eval.linear_standard`). Each
writes its own report (``<run>/eval/probe_fast.json`` / ``probe_standard.json``, :mod:`equissl.eval.records`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from equissl.build import build_dataset
from equissl.config import Config, DataConfig, ProbeConfig, from_dict
from equissl.datasets.ie3d import data_root
from equissl.eval.features import (
    cached_features,
    checkpoint_digest,
    labelled_dataset,
    preprocess,
    weights_identity,
)
from equissl.eval.knn import knn_top1
from equissl.eval.linear_probe import linear_probe
from equissl.eval.linear_standard import StandardProbeConfig, ViewSettings, standard_linear_probe
from equissl.eval.plots import probe_figure
from equissl.eval.records import write_report
from equissl.runs import checkpoint_step, load_backbone, load_objective, load_run

PROTOCOLS = ("fast", "standard")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_model(
    config: Config, checkpoint: Path | None, probe_cfg: ProbeConfig, methods: tuple[str, ...], cache_dir: Path
) -> dict[str, float]:
    """Fast-protocol scores (``linear``, ``knn``: top-1 %) of the checkpoint's backbone (None: random init)."""
    backbone = load_backbone(config, checkpoint, seed=config.trainer.seed)
    weights = weights_identity(checkpoint, config.trainer.seed)
    train_x, train_y = cached_features(backbone, config, "train", cache_dir, weights, _device())
    val_x, val_y = cached_features(backbone, config, "val", cache_dir, weights, _device())
    scores = {}
    if "linear" in methods:
        result = linear_probe(train_x, train_y, val_x, val_y, probe_cfg, seed=config.trainer.seed)
        scores["linear"] = result.top1
    if "knn" in methods:
        scores["knn"] = knn_top1(train_x, train_y, val_x, val_y, probe_cfg.knn_k, probe_cfg.knn_temperature)
    return scores


def _timed(evaluate, *args) -> dict[str, float]:
    """``evaluate(*args)`` with its wall time in seconds added as ``seconds``."""
    start = time.perf_counter()
    scores = evaluate(*args)
    return dict(scores, seconds=round(time.perf_counter() - start, 1))


def view_settings(config: Config) -> ViewSettings:
    return ViewSettings(config.augment.crop_size, tuple(config.augment.mean), tuple(config.augment.std))


def evaluate_model_standard(
    config: Config, checkpoint: Path | None, cfg: StandardProbeConfig, log=print
) -> dict[str, float]:
    """Standard-protocol top-1 (``linear``) of the checkpoint's backbone (None: random init)."""
    backbone = load_backbone(config, checkpoint, seed=config.trainer.seed)
    train, val = labelled_dataset(config, "train"), labelled_dataset(config, "val")
    workers = config.data.num_workers if cfg.num_workers < 0 else cfg.num_workers
    result = standard_linear_probe(
        backbone,
        train,
        val,
        _num_classes(train, val),
        view_settings(config),
        cfg,
        seed=config.trainer.seed,
        device=_device(),
        num_workers=workers,
        log=log,
    )
    return {
        "linear": result.top1,
        "train_top1_last_epoch": result.train_top1,
        "final_train_loss": result.epoch_loss[-1],
        "seconds": result.seconds,
    }


def _num_classes(*datasets) -> int:
    counts = [getattr(d, "num_classes", 0) for d in datasets]
    if max(counts) > 0:
        return max(counts)
    return 1 + max(int(d[i]["label"]) for d in datasets for i in range(len(d)))


def metrics_image_size(config: Config, objective) -> int:
    """Side of the whole images the objective's metrics see: the small-crop size for objectives whose
    heads train on small crops only (E-SSL's rotation head), else ``augment.crop_size``."""
    return config.augment.small_crop_size if objective.required_views.num_small else config.augment.crop_size


@torch.no_grad()
def objective_metrics(config: Config, checkpoint: Path, split: str = "val") -> tuple[dict[str, float], int]:
    """The objective's own metrics (``Objective.evaluation_metrics``) averaged over ``split``, in %, on
    whole images resized to :func:`metrics_image_size`; returns (metrics, that image side)."""
    from torch.utils.data import DataLoader

    objective = load_objective(config, checkpoint, _device())
    dataset = build_dataset(config, split)
    size = metrics_image_size(config, objective)
    sums: dict[str, float] = {}
    count = 0
    for batch in DataLoader(dataset, batch_size=256, num_workers=config.data.num_workers):
        images = preprocess(batch["image"].to(_device()), config)
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True
            )
        values = objective.evaluation_metrics(images)
        if not values:
            return {}, size
        for name, per_sample in values.items():
            sums[name] = sums.get(name, 0.0) + float(per_sample.sum())
        count += len(batch["image"])
    return {name: 100.0 * total / count for name, total in sums.items()}, size


def on_labelled_folder(config: Config, folder: str | Path) -> Config:
    """``config`` reading a labelled image folder instead of its own data: ``folder/train/<class>/`` (and
    ``val/<class>/``, else a held-out part of train), or ``folder/<class>/``; images at the run's
    ``data.image_size``."""
    data = {
        "name": "imagefolder",
        "root": str(Path(folder).expanduser()),
        "labels": "folders",
        "image_size": config.data.image_size,
        "num_workers": config.data.num_workers,
    }
    return dataclasses.replace(config, data=from_dict(DataConfig, data, "data"))


def evaluate_run(
    run_dir: str | Path,
    methods: tuple[str, ...] = ("linear", "knn"),
    compare_random: bool = False,
    checkpoint: str | Path | None = None,
    probe_cfg: ProbeConfig | StandardProbeConfig | None = None,
    protocol: str = "fast",
    log=print,
    data: str | Path | None = None,
) -> dict:
    """Scores of the run's newest checkpoint (and of random init) by ``protocol``, saved as a report
    (:func:`equissl.eval.records.write_report`) and a figure; returns the report (with ``json``, ``figure``).

    ``fast``: ``methods`` among ``linear`` and ``knn``, settings ``probe_cfg`` (a :class:`ProbeConfig`,
    default the run's ``probe`` section). ``standard``: the linear probe only, settings a
    :class:`StandardProbeConfig` (default its defaults). ``data``: a labelled image folder to probe on
    instead of the run's data (:func:`on_labelled_folder`).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    run_dir = Path(run_dir)
    config, path = load_run(run_dir, checkpoint)
    if data is not None:
        config = on_labelled_folder(config, data)
    cache = run_dir / "eval"
    models = [("pretrained", path)] + ([("random init", None)] if compare_random else [])
    if protocol == "fast":
        probe_cfg = probe_cfg or config.probe
        results = {
            name: _timed(evaluate_model, config, ckpt, probe_cfg, methods, cache) for name, ckpt in models
        }
        objective_scores, metrics_size = objective_metrics(config, path)
        evaluation = "probe" if "linear" in methods else "knn"
    else:
        probe_cfg = probe_cfg or StandardProbeConfig()
        methods = ("linear",)
        results = {}
        for name, ckpt in models:
            log(f"standard linear protocol, {name}: {probe_cfg.epochs} epochs")
            results[name] = evaluate_model_standard(config, ckpt, probe_cfg, log)
        objective_scores, metrics_size = {}, None
        evaluation = "probe"
    step = checkpoint_step(path)
    report = {
        "evaluation": evaluation,
        "protocol": protocol,
        "methods": list(methods),
        "settings": dataclasses.asdict(probe_cfg),
        "view": dataclasses.asdict(view_settings(config)),
        "run": str(run_dir),
        "data": f"{config.data.name} {data_root(config.data)}",
        "checkpoint": str(path),
        "checkpoint_sha256": checkpoint_digest(path),
        "step": step,
        "results": results,
        "objective_metrics_val": objective_scores,
        "objective_metrics_image_size": metrics_size,
    }
    json_path = write_report(cache, report)
    title = (
        f"{config.objective.name} / {config.backbone.name} on {config.data.name}, step {step}, "
        f"{protocol} protocol"
    )
    scores = {name: {m: s[m] for m in methods} for name, s in results.items()}
    report["json"] = str(json_path)
    report["figure"] = str(probe_figure(run_dir, scores, json_path.with_suffix(".png"), title))
    return report


def format_report(report: dict) -> str:
    lines = [
        f"{report['run']} (step {report['step']}, {report['protocol']} protocol), {report['data']}: val top-1 %"
    ]
    for model, scores in report["results"].items():
        shown = "  ".join(f"{k} {scores[k]:5.1f}" for k in report["methods"])
        lines.append(f"  {model:<12} {shown}  ({scores['seconds']:.0f} s)")
    for name, value in report.get("objective_metrics_val", {}).items():
        lines.append(
            f"  {name} (val, whole image at {report['objective_metrics_image_size']} px): {value:5.1f}"
        )
    lines.append(f"  saved: {report['json']}")
    lines.append(f"  figure: {report['figure']}")
    return "\n".join(lines)
