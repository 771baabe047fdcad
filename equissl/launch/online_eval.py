"""Online val kNN during pretraining (``trainer.eval_every``, ``trainer.eval_samples``).

Every ``eval_every`` optimizer steps the main process embeds two fixed, bounded image sets with the
backbone in eval mode -- ``eval_samples`` train images (the labelled memory bank) and ``eval_samples`` val
images (the queries), each chosen once as evenly spaced indices of its split, so every class keeps its
share in class-ordered datasets -- and scores the weighted kNN of :mod:`equissl.knn` (``probe.knn_k``,
``probe.knn_temperature``). Views: the whole image resized to ``augment.crop_size`` and normalised, as the
offline probes see it. Written as ``val/knn_top1`` (%) and ``val/knn_seconds`` to metrics.jsonl,
TensorBoard and the progress bar.

It never changes training: images are read once, by index, in the main process (no DataLoader, which
would draw from torch's global generator), BatchNorm is in eval mode (running statistics untouched), no
gradient is taken, and the backbone returns to train mode. A run with it on ends with the same weights as
the run with it off (tests/launch/test_online_eval.py). Cost: ``2 * eval_samples`` forward passes per
evaluation (docs/evaluation.md gives measured figures).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from equissl.augmentations.eval_views import resized_view
from equissl.build import build_dataset
from equissl.config import Config, ConfigError
from equissl.knn import knn_top1


def fixed_indices(length: int, count: int) -> Tensor:
    """``min(count, length)`` evenly spaced indices of ``range(length)`` (both ends included), int64."""
    if length < 1:
        raise ValueError("fixed_indices: the split is empty")
    if count >= length:
        return torch.arange(length)
    return torch.linspace(0, length - 1, count).round().long().unique()


def _labelled(config: Config, split: str):
    dataset = build_dataset(config, split)
    labelled_split = getattr(dataset, "labelled_split", None)
    return labelled_split() if labelled_split is not None else dataset


def _read(dataset, indices: Tensor) -> tuple[Tensor, Tensor]:
    items = [dataset[int(i)] for i in indices]
    if "image" not in items[0] or "label" not in items[0]:
        raise ConfigError(
            "trainer.eval_every: the online val kNN needs labelled images (items with 'image' and 'label')"
        )
    return torch.stack([item["image"] for item in items]), torch.stack(
        [item["label"] for item in items]
    ).long()


class OnlineKNN:
    """The online val kNN of a run; build once, call every ``trainer.eval_every`` steps."""

    def __init__(self, config: Config, batch_size: int = 256) -> None:
        samples = config.trainer.eval_samples
        train, val = _labelled(config, "train"), _labelled(config, "val")
        if getattr(train, "num_classes", 1) == 0:
            raise ConfigError(f"trainer.eval_every: dataset {config.data.name!r} has no labels for a kNN")
        self.bank_images, self.bank_labels = _read(train, fixed_indices(len(train), samples))
        self.query_images, self.query_labels = _read(val, fixed_indices(len(val), samples))
        self.k = min(config.probe.knn_k, len(self.bank_labels))
        self.temperature = config.probe.knn_temperature
        self.view = (config.augment.crop_size, tuple(config.augment.mean), tuple(config.augment.std))
        self.batch_size = batch_size

    @torch.no_grad()
    def _embed(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Features (N, D) float32 of uint8 images, in the backbone's own dtype and device, without
        autocast: the scores do not depend on ``trainer.precision`` (and bf16 is slow on CPUs without it)."""
        parameter = next(backbone.parameters())
        features = []
        for chunk in images.split(self.batch_size):
            views = resized_view(chunk.to(parameter.device), *self.view).to(parameter.dtype)
            features.append(backbone(views).float())
        return torch.cat(features)

    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        """``{"val/knn_top1": %, "val/knn_seconds": s}`` of ``backbone``, left in the mode it was in."""
        start = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            bank = self._embed(backbone, self.bank_images)
            queries = self._embed(backbone, self.query_images)
        finally:
            backbone.train(was_training)
        labels = self.bank_labels.to(bank.device)
        top1 = knn_top1(bank, labels, queries, self.query_labels.to(bank.device), self.k, self.temperature)
        return {"val/knn_top1": top1, "val/knn_seconds": time.perf_counter() - start}


def build_online_eval(config: Config, main_process: bool) -> OnlineKNN | None:
    """The run's online val kNN on the main process when ``trainer.eval_every > 0``, else None."""
    return OnlineKNN(config) if config.trainer.eval_every > 0 and main_process else None


def due(config: Config, step: int) -> bool:
    """Whether the online evaluation runs after optimizer step ``step`` (every ``eval_every``, and last)."""
    every = config.trainer.eval_every
    return every > 0 and (step % every == 0 or step == config.trainer.max_steps)
