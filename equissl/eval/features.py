"""Frozen features of a run's backbone (or of a randomly initialised one), cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from equissl.build import build_dataset
from equissl.config import Config
from equissl.errors import UserError


def preprocess(images: Tensor, config: Config) -> Tensor:
    """uint8 (B, 3, H, W) -> float, resized to the training crop size, normalised: the eval view."""
    x = images.float() / 255.0
    size = config.augment.crop_size
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(config.augment.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(config.augment.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(
    backbone: nn.Module, config: Config, split: str, batch_size: int = 256, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """Pooled features (N, D) and labels (N,) of every labelled image of ``split``, in dataset order."""
    dataset = build_dataset(config, split)
    labelled_split = getattr(dataset, "labelled_split", None)  # pretraining on unlabelled images (STL-10)
    if labelled_split is not None:
        dataset = labelled_split()
    if getattr(dataset, "num_classes", 1) == 0:
        raise UserError(
            f"the {config.data.name} data in {getattr(dataset, 'root', config.data.root)} is unlabelled, so "
            "probes have no classes to score: probe the run on a labelled folder, equissl probe --run RUN "
            "--data FOLDER (FOLDER/train/<class>/...)"
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=config.data.num_workers)
    backbone = backbone.to(device).eval()
    features, labels = [], []
    for batch in loader:
        features.append(backbone(preprocess(batch["image"].to(device), config)).float().cpu())
        labels.append(batch["label"])
    return torch.cat(features), torch.cat(labels)


def cached_features(
    backbone: nn.Module,
    config: Config,
    split: str,
    cache_dir: Path,
    key: str,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """``extract_features`` memoised in ``cache_dir`` under ``key`` (checkpoint identity) and split."""
    digest = hashlib.sha1(f"{key}|{split}|{config.augment.crop_size}|{config.data}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"features-{split}-{digest}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        return cached["features"], cached["labels"]
    features, labels = extract_features(backbone, config, split, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features": features, "labels": labels}, path)
    return features, labels
