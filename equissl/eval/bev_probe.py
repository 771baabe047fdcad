"""BEV probe: how much object information a frozen LiDAR encoder's BEV map holds.

A 1x1-conv head (one logistic regression per class, shared over cells) is trained on frozen BEV features
of the training drives to predict per-class object occupancy -- whether a cell of the feature map
overlaps a box of that class (tested on ``subsamples`` x ``subsamples`` points per cell, boxes with at
least one return) -- and scored on the held-out drives (``val`` split) by the average precision of every
class over all cells, and their mean (mAP, in %). Features are standardised with training statistics;
the training set keeps every object cell and ``negatives_per_positive`` random background cells per
object cell.

For a fair comparison the batch-norm statistics of both encoders (pretrained and random) are
re-estimated on the probe's training sweeps first (``recalibrate_bn``): a random encoder's initial
statistics (0 / 1) would otherwise handicap it.

    equissl probe --run runs/essl3d_pointpillars_lidarsim [--compare-random] [probe.epochs=40 ...]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from equissl.build import build_dataset
from equissl.datasets.lidar import CLASS_NAMES


@dataclass
class BEVProbeConfig:
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_cells: int = 4096  # cells per optimisation step of the head
    negatives_per_positive: int = 8
    subsamples: int = 3  # occupancy test points per cell side
    batch_size: int = 8  # sweeps per backbone forward
    max_train_sweeps: int = 0  # 0: all
    max_val_sweeps: int = 0
    recalibrate_bn: bool = True
    seed: int = 0


# ----------------------------------------------------------------------------------------------------
# Targets and metric.


def occupancy_targets(
    boxes: Tensor,
    labels: Tensor,
    point_cloud_range,
    height: int,
    width: int,
    num_classes: int,
    subsamples: int = 3,
) -> Tensor:
    """(B, K, 7) boxes ``(x, y, z, dx, dy, dz, heading)`` and (B, K) labels (-1 = padding) -> (B, num_classes,
    height, width) bool: cell overlaps a box of the class (any of subsamples^2 points inside it in x/y)."""
    x_min, y_min, _, x_max, y_max, _ = point_cloud_range
    step_x, step_y = (x_max - x_min) / width, (y_max - y_min) / height
    offsets = (torch.arange(subsamples, dtype=boxes.dtype, device=boxes.device) + 0.5) / subsamples
    xs = x_min + (torch.arange(width, device=boxes.device).view(-1, 1) + offsets) * step_x  # (W, s)
    ys = y_min + (torch.arange(height, device=boxes.device).view(-1, 1) + offsets) * step_y  # (H, s)
    px = xs.view(1, width, 1, subsamples).expand(height, width, subsamples, subsamples)
    py = ys.view(height, 1, subsamples, 1).expand(height, width, subsamples, subsamples)
    points = torch.stack([px, py], dim=-1).reshape(-1, 2)  # (H W s s, 2)
    out = torch.zeros(boxes.shape[0], num_classes, height, width, dtype=torch.bool, device=boxes.device)
    for b in range(boxes.shape[0]):
        keep = labels[b] >= 0
        if not keep.any():
            continue
        box, label = boxes[b][keep], labels[b][keep]
        rel = points.unsqueeze(0) - box[:, None, :2]  # (K, P, 2)
        cos, sin = torch.cos(box[:, 6:7]), torch.sin(box[:, 6:7])
        local_x = rel[..., 0] * cos + rel[..., 1] * sin
        local_y = -rel[..., 0] * sin + rel[..., 1] * cos
        inside = (local_x.abs() <= box[:, 3:4] / 2) & (local_y.abs() <= box[:, 4:5] / 2)  # (K, P)
        inside = inside.view(-1, height, width, subsamples * subsamples).any(-1)  # (K, H, W)
        for k in range(num_classes):
            if (label == k).any():
                out[b, k] = inside[label == k].any(0)
    return out


def average_precision(scores: Tensor, targets: Tensor) -> float:
    """Non-interpolated AP (sklearn's ``average_precision_score``): mean precision at each positive, ranked
    by descending score; NaN without positives."""
    targets = targets.bool().flatten()
    positives = int(targets.sum())
    if positives == 0:
        return math.nan
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    hits = targets[order].float()
    precision = torch.cumsum(hits, 0) / torch.arange(1, len(hits) + 1, device=hits.device)
    return float((precision * hits).sum() / positives)


# ----------------------------------------------------------------------------------------------------
# Frozen features.


@torch.no_grad()
def recalibrate_batch_norm(backbone: nn.Module, loader: DataLoader, device) -> None:
    """Re-estimate every BN layer's running statistics as a plain average over ``loader``'s sweeps."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    backbone.train()
    for batch in loader:
        backbone.forward_features(batch["points"].to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    backbone.eval()


def _loader(dataset, limit: int, batch_size: int) -> DataLoader:
    if limit and limit < len(dataset):
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])  # spread over the drives
    collate = dataset.dataset.collate_fn if isinstance(dataset, Subset) else dataset.collate_fn
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)


@torch.no_grad()
def _features_and_targets(backbone: nn.Module, batch: dict, cfg: BEVProbeConfig, num_classes: int, device):
    if "boxes" not in batch:
        raise ValueError("the BEV probe needs boxes: use a dataset with 3D boxes (lidar_sim)")
    features = backbone.forward_features(batch["points"].to(device)).float()
    height, width = features.shape[-2:]
    targets = occupancy_targets(
        batch["boxes"].to(device),
        batch["box_labels"].to(device),
        backbone.point_cloud_range,
        height,
        width,
        num_classes,
        cfg.subsamples,
    )
    return features, targets


def _training_cells(backbone, loader, cfg: BEVProbeConfig, num_classes: int, device) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, labels = [], []
    for batch in loader:
        features, targets = _features_and_targets(backbone, batch, cfg, num_classes, device)
        cells = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).cpu()
        occupied = targets.permute(0, 2, 3, 1).reshape(-1, num_classes).cpu()
        positive = occupied.any(1)
        negatives = torch.nonzero(~positive).squeeze(1)
        count = min(len(negatives), max(1, int(positive.sum())) * cfg.negatives_per_positive)
        chosen = negatives[torch.randperm(len(negatives), generator=generator)[:count]]
        keep = torch.cat([torch.nonzero(positive).squeeze(1), chosen])
        rows.append(cells[keep])
        labels.append(occupied[keep])
    return torch.cat(rows), torch.cat(labels).float()


def _train_head(x: Tensor, y: Tensor, cfg: BEVProbeConfig) -> nn.Conv2d:
    torch.manual_seed(cfg.seed)
    head = nn.Conv2d(x.shape[1], y.shape[1], kernel_size=1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_cells)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for index in torch.randperm(len(x), generator=generator).split(cfg.batch_cells):
            logits = head(x[index, :, None, None]).flatten(1)
            loss = F.binary_cross_entropy_with_logits(logits, y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def bev_probe(
    backbone: nn.Module,
    train_set,
    val_set,
    cfg: BEVProbeConfig | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    device: str | torch.device = "cpu",
) -> dict:
    """Train the occupancy head on ``train_set``'s frozen features, score it on ``val_set``: {"mAP", "AP":
    {class: %}, "val_positive_cells": {class: n}, "train_cells": n}."""
    cfg = cfg or BEVProbeConfig()
    num_classes = len(class_names)
    backbone = backbone.to(device)
    train_loader = _loader(train_set, cfg.max_train_sweeps, cfg.batch_size)
    if cfg.recalibrate_bn:
        recalibrate_batch_norm(backbone, train_loader, device)
    backbone.eval()
    x, y = _training_cells(backbone, train_loader, cfg, num_classes, device)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    head = _train_head((x - mean) / std, y, cfg)
    scores, targets = [], []
    with torch.no_grad():
        for batch in _loader(val_set, cfg.max_val_sweeps, cfg.batch_size):
            features, occupied = _features_and_targets(backbone, batch, cfg, num_classes, device)
            features = (features.cpu() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
            scores.append(head(features).permute(1, 0, 2, 3).reshape(num_classes, -1))
            targets.append(occupied.cpu().permute(1, 0, 2, 3).reshape(num_classes, -1))
    scores, targets = torch.cat(scores, 1), torch.cat(targets, 1)
    ap = {name: 100 * average_precision(scores[k], targets[k]) for k, name in enumerate(class_names)}
    present = [v for v in ap.values() if not math.isnan(v)]
    return {
        "mAP": sum(present) / len(present) if present else math.nan,
        "AP": ap,
        "val_positive_cells": {name: int(targets[k].sum()) for k, name in enumerate(class_names)},
        "train_cells": len(x),
    }


# ----------------------------------------------------------------------------------------------------
# A run's encoder against random initialisation.


def evaluate_bev_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    compare_random: bool = True,
    cfg: BEVProbeConfig | None = None,
    device: str | None = None,
) -> dict:
    """BEV probe of the run's newest (or given) checkpoint and, optionally, of a random encoder of the
    same architecture (same seed as the run's initialisation); saved to ``run_dir/eval/bev_probe.json``."""
    from equissl.runs import checkpoint_step, load_backbone, load_run

    cfg = cfg or BEVProbeConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config, path = load_run(run_dir, checkpoint)
    train_set, val_set = (build_dataset(config, split, source="lidar_pair") for split in ("train", "val"))
    results = {
        "pretrained": bev_probe(
            load_backbone(config, path, config.trainer.seed), train_set, val_set, cfg, device=device
        )
    }
    if compare_random:
        results["random init"] = bev_probe(
            load_backbone(config, None, config.trainer.seed), train_set, val_set, cfg, device=device
        )
    report = {
        "run": str(run_dir),
        "checkpoint": str(path),
        "step": checkpoint_step(path),
        "probe": asdict(cfg),
        "results": results,
    }
    out = Path(run_dir) / "eval" / "bev_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['run']} (step {report['step']}): BEV occupancy probe on held-out drives, AP %"]
    for model, scores in report["results"].items():
        per_class = "  ".join(f"{k} {v:5.1f}" for k, v in scores["AP"].items())
        lines.append(f"  {model:<12} mAP {scores['mAP']:5.1f}   {per_class}")
    return "\n".join(lines)
