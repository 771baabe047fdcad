"""``equissl finetune``: fine-tune the whole network for classification on a labelled fraction of the
train split, beside a randomly initialised backbone fine-tuned on the same budget (low-label evaluation).

Protocol (also in docs/evaluation.md, "Fine-tune and low-label"), with the settings of :class:`FinetuneConfig`:

- the labelled fraction: :func:`labelled_fraction` keeps ``max(1, round(fraction * n_c))`` images of every
  class c (n_c: its train images), drawn with a generator seeded by ``split_seed``: the same images for
  every run, checkpoint and backbone; ``fraction = 1`` keeps all;
- the backbone (in train mode: BatchNorm statistics are updated) and a linear head (N(0, 0.01^2), bias 0)
  are trained together with cross-entropy and SGD (momentum 0.9, ``weight_decay`` 0), the backbone at
  ``lr_backbone`` 0.005 and the head at ``lr_head`` 0.5, both following a cosine to 0 over every step, for
  ``epochs`` = 20 epochs of mini-batches of ``batch_size`` = 256 (the last one smaller);
- at least ``min_steps`` (200) optimizer steps (:func:`finetune_schedule`): on a labelled set too small for
  that many batches of ``batch_size`` in ``epochs``, the batch shrinks (to no fewer than
  ``min_batch_size`` = 32 images) and both learning rates scale with it linearly (Goyal et al., 2017), so
  the same images are seen in more, smaller steps; only if that is not enough are epochs added. Barlow
  Twins' smallest ImageNet run (1% labels: 12,811 images, 1,020 steps) is unchanged. On shapes3d at 10%
  labels (600 images) the unmodified settings take 60 steps, and both the pretrained and the random
  backbone ended near chance (13.2% and 14.5% top-1): the head's learning rate 0.5 had no steps left to
  settle in; with the batch of 60 this rule gives (200 steps, the same images seen), they reach 53.5% and
  25.2% (docs/reports/2026-12-03-evaluation-protocols.md);
- views: the standard augmentation of :mod:`equissl.eval.linear_standard` (RandomResizedCrop (0.08, 1) +
  flip) for training, resized centre views (``val_crop_fraction`` 0.875) for the val top-1 after the last
  epoch;
- the random-initialisation baseline (``compare_random``) runs the same protocol, split, seed and budget
  on the architecture's seeded initialisation.

Source: Barlow Twins' ``evaluate.py --weights finetune --train-perc 1|10`` (used by E-SSL): 20 epochs,
``--lr-backbone 0.005`` (the README's 1% command; 0.002 in another revision) and ``--lr-classifier 0.5``,
weight decay 0, SGD momentum 0.9, batch 256, cosine, RandomResizedCrop + flip, Resize + CenterCrop val.
Where we differ: its subsets are fixed ImageNet file lists (SimCLR's 1% / 10%), ours are drawn per class
with a fixed seed; the cosine is stepped per mini-batch, not per epoch; the top-1 is the last epoch's,
not the best over epochs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from equissl.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range
from equissl.eval.features import checkpoint_digest, labelled_dataset
from equissl.eval.linear_standard import (
    ImageSource,
    UnitOpenLow,
    ViewSettings,
    evaluate_classifier,
    train_on_augmented_views,
)
from equissl.eval.records import write_report
from equissl.runs import checkpoint_step, load_backbone, load_run


@dataclass
class FinetuneConfig:
    """Settings of ``equissl finetune`` (``KEY=VALUE`` after the command)."""

    fraction: UnitOpenLow = 0.1  # of every class's train images
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 256
    lr_backbone: NonNegativeFloat = 0.005  # SGD, cosine to 0 over every step
    lr_head: PositiveFloat = 0.5
    min_steps: NonNegativeInt = 200  # fewest optimizer steps (see finetune_schedule); 0: off
    min_batch_size: PositiveInt = 32  # the smallest batch min_steps may shrink to
    weight_decay: NonNegativeFloat = 0.0
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    crop_scale: tuple[UnitOpenLow, UnitOpenLow] = (0.08, 1.0)
    crop_ratio: tuple[PositiveFloat, PositiveFloat] = (0.75, 4 / 3)
    hflip_prob: Probability = 0.5
    val_crop_fraction: UnitOpenLow = 0.875
    split_seed: NonNegativeInt = 0  # draws the labelled fraction
    seed: Annotated[int, Range(-1)] = -1  # head initialisation, order, augmentation; -1: trainer.seed
    compare_random: bool = True
    image_cache_mib: NonNegativeInt = 2048
    num_workers: Annotated[int, Range(-1)] = -1  # -1: the run's data.num_workers


def item_labels(dataset: Dataset) -> Tensor:
    """(N,) int64 label of every item of ``dataset``: its ``labels`` array (one per item, or one per object
    of ``views_per_object`` items for 3DIEBench-format data), else read item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if len(labels) == len(dataset):
            return labels
        views = getattr(dataset, "views_per_object", None)
        if views and len(labels) * views == len(dataset):
            return labels.repeat_interleave(views)
    return torch.stack([torch.as_tensor(dataset[i]["label"]) for i in range(len(dataset))]).long()


def labelled_fraction(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Sorted indices of a per-class labelled subset: ``max(1, floor(fraction * n_c + 1/2))`` of the
    ``n_c`` items of each class c (classes in increasing order), each class's drawn by ``randperm`` from
    one generator seeded with ``seed``. ``fraction >= 1``: every index."""
    if not 0 < fraction:
        raise ValueError(f"fraction must be > 0, got {fraction}")
    if fraction >= 1:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        keep = max(1, math.floor(fraction * len(members) + 0.5))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.sort(torch.cat(chosen)).values


@dataclass(frozen=True)
class Schedule:
    """The fine-tune's effective budget: ``epochs`` of ``batch_size`` images, ``steps`` optimizer steps in
    all, learning rates multiplied by ``lr_scale``."""

    batch_size: int
    epochs: int
    steps: int
    lr_scale: float


def finetune_schedule(images: int, cfg: FinetuneConfig) -> Schedule:
    """The budget for ``images`` labelled images: ``cfg.epochs`` of ``cfg.batch_size`` when that makes at
    least ``cfg.min_steps`` steps; else the batch shrinks to ``floor(images * epochs / min_steps)`` (not
    below ``min(min_batch_size, batch_size, images)``) with the learning rates scaled by
    ``batch / batch_size``, and, if still short, the epochs grow to ``ceil(min_steps / batches per epoch)``.

    E.g. 600 images, 20 epochs of 256, 200 steps: batch 60, 20 epochs, 200 steps, lr x 60/256."""
    floor_batch = min(cfg.min_batch_size, cfg.batch_size, images)
    batch = cfg.batch_size
    if cfg.min_steps > 0:
        batch = max(floor_batch, min(batch, images * cfg.epochs // cfg.min_steps))
    per_epoch = math.ceil(images / batch)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    return Schedule(batch, epochs, epochs * per_epoch, batch / cfg.batch_size)


def finetune_classifier(
    backbone: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    num_classes: int,
    view: ViewSettings,
    cfg: FinetuneConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict:
    """Fine-tune ``backbone`` and a linear head on every item of ``train_set`` by the module's protocol
    (the budget of :func:`finetune_schedule`); returns ``{"top1": val %, "train_top1": last epoch %,
    "final_train_loss", "seconds", "schedule"}``."""
    start = time.perf_counter()
    schedule = finetune_schedule(len(train_set), cfg)
    backbone = backbone.to(device).train().requires_grad_(True)
    torch.manual_seed(seed)
    with torch.no_grad():
        dim = backbone.eval()(torch.zeros(2, 3, view.crop_size, view.crop_size, device=device)).shape[1]
    backbone.train()
    head = nn.Linear(dim, num_classes).to(device)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    lr_head, lr_backbone = cfg.lr_head * schedule.lr_scale, cfg.lr_backbone * schedule.lr_scale
    groups = [{"params": list(head.parameters()), "lr": lr_head}]
    if lr_backbone > 0:
        groups.append({"params": list(backbone.parameters()), "lr": lr_backbone})
    else:
        backbone.requires_grad_(False)
    optimizer = torch.optim.SGD(groups, lr=lr_head, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train = ImageSource(train_set, cfg.image_cache_mib, num_workers)
    budget = dataclasses.replace(cfg, epochs=schedule.epochs, batch_size=schedule.batch_size)
    epoch_loss, train_top1 = train_on_augmented_views(
        lambda x: head(backbone(x)), optimizer, train, budget, view, seed, device, log=None
    )
    backbone.eval()
    top1 = evaluate_classifier(
        lambda x: head(backbone(x)), val_set, view, cfg.val_crop_fraction, device, num_workers
    )
    return {
        "top1": top1,
        "train_top1": train_top1,
        "final_train_loss": epoch_loss[-1] if epoch_loss else 0.0,
        "seconds": round(time.perf_counter() - start, 1),
        "schedule": dataclasses.asdict(schedule),
    }


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def finetune_run(
    run_dir: str | Path, cfg: FinetuneConfig | None = None, checkpoint: str | Path | None = None, log=print
) -> dict:
    """Fine-tune the run's backbone (and a random initialisation) on the labelled fraction; write
    ``<run>/eval/finetune_fraction-<f>.json`` and return the report (with ``json``)."""
    cfg = cfg or FinetuneConfig()
    run_dir = Path(run_dir)
    config, path = load_run(run_dir, checkpoint)
    seed = config.trainer.seed if cfg.seed < 0 else cfg.seed
    train_all, val = labelled_dataset(config, "train"), labelled_dataset(config, "val")
    labels = item_labels(train_all)
    subset = labelled_fraction(labels, cfg.fraction, cfg.split_seed)
    num_classes = max(getattr(train_all, "num_classes", 0), int(labels.max()) + 1)
    workers = config.data.num_workers if cfg.num_workers < 0 else cfg.num_workers
    view = ViewSettings(config.augment.crop_size, tuple(config.augment.mean), tuple(config.augment.std))
    train = Subset(train_all, subset.tolist())
    schedule = finetune_schedule(len(subset), cfg)
    log(
        f"fine-tune on {len(subset)} of {len(labels)} train images ({cfg.fraction:g} per class): "
        f"{schedule.epochs} epochs of batch {schedule.batch_size}, {schedule.steps} steps, lr x {schedule.lr_scale:.3g}"
    )
    models = [("pretrained", path)] + ([("random init", None)] if cfg.compare_random else [])
    results = {}
    for name, weights in models:
        backbone = load_backbone(config, weights, seed=config.trainer.seed)
        results[name] = finetune_classifier(
            backbone, train, val, num_classes, view, cfg, seed, _device(), workers
        )
        log(f"{name}: val top-1 {results[name]['top1']:.1f}% ({results[name]['seconds']:.0f} s)")
    report = {
        "evaluation": "finetune",
        "protocol": f"fraction={cfg.fraction:g}",
        "settings": dataclasses.asdict(cfg),
        "view": dataclasses.asdict(view),
        "run": str(run_dir),
        "checkpoint": str(path),
        "checkpoint_sha256": checkpoint_digest(path),
        "step": checkpoint_step(path),
        "schedule": dataclasses.asdict(schedule),
        "labelled_images": len(subset),
        "labelled_per_class": torch.bincount(labels[subset], minlength=num_classes).tolist(),
        "train_images": len(labels),
        "results": results,
    }
    report["json"] = str(write_report(run_dir / "eval", report))
    return report


def format_finetune(report: dict) -> str:
    head = (
        f"{report['run']} (step {report['step']}): fine-tune on {report['labelled_images']} of "
        f"{report['train_images']} train images ({report['protocol']}), val top-1 %"
    )
    lines = [head]
    for name, result in report["results"].items():
        lines.append(f"  {name:<12} top-1 {result['top1']:5.1f}  ({result['seconds']:.0f} s)")
    lines.append(f"  saved: {report['json']}")
    return "\n".join(lines)
