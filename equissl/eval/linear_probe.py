"""Offline linear probe on frozen, cached features.

Protocol (also in docs/evaluation.md): features are standardised with the train split's mean and std; a
linear classifier is trained with AdamW (``probe.lr``, cosine-decayed, ``probe.epochs`` epochs of
mini-batches of ``probe.batch_size``) for each weight decay in ``probe.weight_decays`` on train minus a
held-out ``probe.holdout_fraction``; the weight decay with the best held-out top-1 is retrained on the
whole train split and its top-1 on the val split is reported. Deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.config import ProbeConfig


@dataclass
class ProbeResult:
    top1: float  # percent, on the evaluation split
    weight_decay: float  # chosen on the held-out part of train
    holdout_top1: dict[float, float]  # weight decay -> held-out top-1 (percent)


def standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def top1(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def train_linear(
    features: Tensor, labels: Tensor, num_classes: int, cfg: ProbeConfig, weight_decay: float, seed: int = 0
) -> torch.nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(features) // cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(features), generator=generator)
        for batch in order.split(cfg.batch_size):
            loss = F.cross_entropy(classifier(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return classifier


def linear_probe(
    train_x: Tensor, train_y: Tensor, eval_x: Tensor, eval_y: Tensor, cfg: ProbeConfig, seed: int = 0
) -> ProbeResult:
    """Top-1 (%) of a linear classifier on frozen features, weight decay chosen on held-out train."""
    if len(train_x) != len(train_y) or len(eval_x) != len(eval_y):
        raise ValueError("features and labels differ in length")
    num_classes = int(max(train_y.max(), eval_y.max())) + 1
    train_x, eval_x = standardise(train_x.float(), eval_x.float())
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    n_holdout = max(1, int(len(train_x) * cfg.holdout_fraction))
    held, fit = order[:n_holdout], order[n_holdout:]
    holdout_top1 = {}
    with torch.enable_grad():
        for wd in cfg.weight_decays:
            classifier = train_linear(train_x[fit], train_y[fit], num_classes, cfg, wd, seed)
            with torch.no_grad():
                holdout_top1[wd] = top1(classifier(train_x[held]), train_y[held])
        best = max(cfg.weight_decays, key=lambda wd: (holdout_top1[wd], -wd))
        classifier = train_linear(train_x, train_y, num_classes, cfg, best, seed)
    with torch.no_grad():
        return ProbeResult(top1(classifier(eval_x), eval_y), best, holdout_top1)
