"""The papers' linear protocol (``equissl probe --protocol standard``): a linear layer trained with SGD on
the frozen backbone's features of augmented train views, computed on the fly.

Protocol (also in docs/evaluation.md, "Standard protocol"), with the settings of :class:`StandardProbeConfig`:

- the backbone is frozen and in eval mode (BatchNorm uses its running statistics and never updates them);
- every epoch, every labelled train image is seen once, in a seeded random order, as a RandomResizedCrop
  (area ``crop_scale`` (0.08, 1), aspect ``crop_ratio`` (3/4, 4/3)) to ``augment.crop_size`` with a
  horizontal flip (probability 0.5), normalised; its features are computed on the fly;
- a linear layer (weights ~ N(0, 0.01^2), bias 0) is trained on them with cross-entropy and SGD (momentum
  0.9, ``lr`` 0.1, ``weight_decay`` 1e-6) for ``epochs`` = 100 epochs of mini-batches of ``batch_size`` =
  256, the learning rate following a cosine from ``lr`` to 0 over every step;
- val is scored once, after the last epoch, on resized centre views: the shorter side resized to
  ``crop_size / val_crop_fraction`` (0.875), the centre ``crop_size`` square kept, normalised. Top-1 in %.

Sources. E-SSL's ``imagenet/*/linear_probe.py`` (Barlow Twins' ``evaluate.py``): SGD momentum 0.9, lr 0.1
(the classifier's), weight decay 1e-6, batch 256, 100 epochs, ``CosineAnnealingLR`` stepped per epoch,
RandomResizedCrop + flip, ``Resize(256) + CenterCrop(224)`` val, the frozen model in eval mode, the
classifier N(0, 0.01) / 0. solo-learn's ``main_linear.py`` uses the same views (RandomResizedCrop scale
(0.08, 1) + flip; ImageNet val ``Resize(256) + CenterCrop(224)``, CIFAR val the whole image) with SGD and a
per-recipe learning rate and schedule. Where we differ: the cosine is stepped per mini-batch rather than
per epoch, and we report the top-1 after the last epoch, whereas E-SSL / Barlow Twins print the best
val top-1 over the epochs (a choice made on val). CARE's CIFAR / STL-10 ``linear.py`` is not this
protocol: it trains with Adam (lr 1e-3, wd 1e-6) on the *pretraining* augmentation (colour jitter,
grayscale, blur) with the backbone left in train mode, so its BatchNorm statistics move during the probe;
CARE's ImageNet-100 ``main_lincls.py`` is MoCo's (SGD lr 30, step schedule, eval mode).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from equissl.augmentations.eval_views import center_view, random_resized_view
from equissl.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range

UnitOpenLow = Annotated[float, Range(0, 1, low_open=True)]


@dataclass
class StandardProbeConfig:
    """Settings of the standard linear protocol (``equissl probe --protocol standard probe.KEY=VALUE``)."""

    epochs: PositiveInt = 100
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 0.1  # SGD, for batch_size images; cosine to 0 over every step
    weight_decay: NonNegativeFloat = 1e-6
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    crop_scale: tuple[UnitOpenLow, UnitOpenLow] = (0.08, 1.0)  # RandomResizedCrop area fraction
    crop_ratio: tuple[PositiveFloat, PositiveFloat] = (0.75, 4 / 3)
    hflip_prob: Probability = 0.5
    val_crop_fraction: UnitOpenLow = 0.875  # val: resize to crop / fraction, keep the centre crop
    # Train images are held in memory (uint8) when they fit in this many MiB, else read every epoch.
    image_cache_mib: NonNegativeInt = 2048
    num_workers: Annotated[int, Range(-1)] = -1  # data loading; -1: the run's data.num_workers


@dataclass
class ViewSettings:
    """What the views are made to: side in pixels and the normalisation (the run's ``augment``)."""

    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class StandardProbeResult:
    top1: float  # percent, on the val split, after the last epoch
    train_top1: float  # percent, on the augmented train views of the last epoch
    epoch_loss: list[float] = field(default_factory=list)  # mean train loss of every epoch
    seconds: float = 0.0


class ImageSource:
    """Labelled images of a dataset in a given order: from memory when they fit, else read each time."""

    def __init__(self, dataset: Dataset, cache_mib: int, num_workers: int) -> None:
        self.dataset, self.num_workers = dataset, num_workers
        first = dataset[0]["image"]
        self.cached: tuple[Tensor, Tensor] | None = None
        if len(dataset) * first.numel() * first.element_size() <= cache_mib * 2**20:
            self.cached = self._read(range(len(dataset)), 256)

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, order, batch_size: int) -> tuple[Tensor, Tensor]:
        images, labels = zip(*self.batches(torch.as_tensor(list(order)), batch_size, use_cache=False))
        return torch.cat(images), torch.cat(labels)

    def batches(
        self, order: Tensor, batch_size: int, use_cache: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 images, int64 labels) of the items ``order``, ``batch_size`` at a time."""
        if use_cache and self.cached is not None:
            for rows in order.split(batch_size):
                yield self.cached[0][rows], self.cached[1][rows]
            return
        loader = DataLoader(
            Subset(self.dataset, order.tolist()), batch_size=batch_size, num_workers=self.num_workers
        )
        for batch in loader:
            yield batch["image"], batch["label"].long()


def cosine_factor(step: int, total: int) -> float:
    """Learning-rate factor of a cosine from 1 (step 0) to 0 (step ``total``)."""
    return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


@torch.no_grad()
def _features(backbone: nn.Module, views: Tensor) -> Tensor:
    return backbone(views).float()


def standard_linear_probe(
    backbone: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    num_classes: int,
    view: ViewSettings,
    cfg: StandardProbeConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    log: Callable[[str], None] | None = None,
) -> StandardProbeResult:
    """Train a linear classifier on the frozen ``backbone`` by the module's protocol; score val.

    train_set / val_set: items ``{"image": uint8 (3, H, W), "label": int64}``; num_classes: C;
    view: crop side and normalisation; seed: draws the classifier's initialisation, the order of every
    epoch and the augmentation. Deterministic given ``seed`` (on one device type).
    """
    start = time.perf_counter()
    if cfg.crop_scale[0] > cfg.crop_scale[1] or cfg.crop_ratio[0] > cfg.crop_ratio[1]:
        raise ValueError("probe.crop_scale and probe.crop_ratio must be (low, high) with low <= high")
    backbone = backbone.to(device).eval().requires_grad_(False)
    train = ImageSource(train_set, cfg.image_cache_mib, num_workers)
    torch.manual_seed(seed)
    with torch.no_grad():
        dim = _features(backbone, torch.zeros(1, 3, view.crop_size, view.crop_size, device=device)).shape[1]
    classifier = nn.Linear(dim, num_classes).to(device)
    nn.init.normal_(classifier.weight, 0.0, 0.01)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(
        classifier.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    epoch_loss, train_top1 = train_on_augmented_views(
        lambda x: classifier(_features(backbone, x)), optimizer, train, cfg, view, seed, device, log
    )
    top1 = evaluate_classifier(
        lambda x: classifier(_features(backbone, x)),
        val_set,
        view,
        cfg.val_crop_fraction,
        device,
        num_workers,
    )
    return StandardProbeResult(
        top1=top1,
        train_top1=train_top1,
        epoch_loss=epoch_loss,
        seconds=round(time.perf_counter() - start, 1),
    )


def train_on_augmented_views(
    model: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    train: ImageSource,
    cfg,
    view: ViewSettings,
    seed: int,
    device: str | torch.device,
    log=print,
) -> tuple[list[float], float]:
    """Cross-entropy SGD of ``model`` (images -> logits) on RandomResizedCrop + flip views, the learning
    rate on a per-step cosine to 0: the training of the standard probe and of the fine-tune.

    ``cfg`` supplies ``epochs``, ``batch_size``, ``crop_scale``, ``crop_ratio``, ``hflip_prob``; ``seed``
    draws every epoch's order and the augmentation. Returns the mean train loss of every epoch and the last
    epoch's train top-1 (%).
    """
    total = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total))
    order_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    epoch_loss, correct, seen = [], 0, 0
    with torch.enable_grad():
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(train), generator=order_generator)
            loss_sum, correct, seen = 0.0, 0, 0
            for images, labels in train.batches(order, cfg.batch_size):
                labels = labels.to(device)
                views = random_resized_view(
                    images.to(device),
                    view.crop_size,
                    tuple(cfg.crop_scale),
                    tuple(cfg.crop_ratio),
                    cfg.hflip_prob,
                    view.mean,
                    view.std,
                    augment_generator,
                )
                logits = model(views)
                loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
            epoch_loss.append(loss_sum / max(1, seen))
            if log is not None and (epoch + 1) % max(1, cfg.epochs // 10) == 0:
                log(f"  epoch {epoch + 1}/{cfg.epochs}: train loss {epoch_loss[-1]:.4f}")
    return epoch_loss, 100.0 * correct / max(1, seen)


@torch.no_grad()
def evaluate_classifier(
    model: Callable[[Tensor], Tensor],
    dataset: Dataset,
    view: ViewSettings,
    crop_fraction: float,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    batch_size: int = 256,
) -> float:
    """Top-1 (%) of ``model`` (normalised views -> logits) on the resized centre views of ``dataset``."""
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        views = center_view(batch["image"].to(device), view.crop_size, crop_fraction, view.mean, view.std)
        labels = batch["label"].to(device)
        correct += int((model(views).argmax(1) == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(1, total)
