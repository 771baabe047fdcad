"""``equissl probe`` / ``equissl knn``: evaluate a run's frozen backbone, optionally beside a randomly
initialised one of the same architecture, print and save the figures; on the run's own data or, with
``data`` (``--data FOLDER``), on a labelled image folder (a run pretrained on unlabelled images)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from equissl.build import build_dataset
from equissl.config import Config, DataConfig, ProbeConfig, from_dict
from equissl.datasets.ie3d import data_root
from equissl.eval.features import cached_features, preprocess
from equissl.eval.knn import knn_top1
from equissl.eval.linear_probe import linear_probe
from equissl.eval.plots import probe_figure
from equissl.runs import checkpoint_step, load_backbone, load_objective, load_run


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_model(
    config: Config, checkpoint: Path | None, probe_cfg: ProbeConfig, methods: tuple[str, ...], cache_dir: Path
) -> dict[str, float]:
    backbone = load_backbone(config, checkpoint, seed=config.trainer.seed)
    key = str(checkpoint.resolve()) if checkpoint is not None else f"random-init-seed{config.trainer.seed}"
    train_x, train_y = cached_features(backbone, config, "train", cache_dir, key, _device())
    val_x, val_y = cached_features(backbone, config, "val", cache_dir, key, _device())
    scores = {}
    if "linear" in methods:
        result = linear_probe(train_x, train_y, val_x, val_y, probe_cfg, seed=config.trainer.seed)
        scores["linear"] = result.top1
    if "knn" in methods:
        scores["knn"] = knn_top1(train_x, train_y, val_x, val_y, probe_cfg.knn_k, probe_cfg.knn_temperature)
    return scores


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
    probe_cfg: ProbeConfig | None = None,
    data: str | Path | None = None,
) -> dict:
    """Scores of the run's newest checkpoint (and of random init), saved as JSON and a figure; on the
    labelled image folder ``data`` when given (:func:`on_labelled_folder`)."""
    run_dir = Path(run_dir)
    config, path = load_run(run_dir, checkpoint)
    if data is not None:
        config = on_labelled_folder(config, data)
    probe_cfg = probe_cfg or config.probe
    cache = run_dir / "eval"
    results = {"pretrained": evaluate_model(config, path, probe_cfg, methods, cache)}
    if compare_random:
        results["random init"] = evaluate_model(config, None, probe_cfg, methods, cache)
    objective_scores, metrics_size = objective_metrics(config, path)
    step = checkpoint_step(path)
    name = "_".join(methods)
    report = {
        "run": str(run_dir),
        "data": f"{config.data.name} {data_root(config.data)}",
        "checkpoint": str(path),
        "step": step,
        "results": results,
        "objective_metrics_val": objective_scores,
        "objective_metrics_image_size": metrics_size,
    }
    (cache / f"{name}.json").write_text(json.dumps(report, indent=2))
    title = f"{config.objective.name} / {config.backbone.name} on {config.data.name}, step {step}"
    report["figure"] = str(probe_figure(run_dir, results, cache / f"{name}.png", title))
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['run']} (step {report['step']}), {report['data']}: val top-1 %"]
    for model, scores in report["results"].items():
        lines.append(f"  {model:<12} " + "  ".join(f"{k} {v:5.1f}" for k, v in scores.items()))
    for name, value in report.get("objective_metrics_val", {}).items():
        lines.append(
            f"  {name} (val, whole image at {report['objective_metrics_image_size']} px): {value:5.1f}"
        )
    lines.append(f"  figure: {report['figure']}")
    return "\n".join(lines)
