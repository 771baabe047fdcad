"""Frozen features of a run's backbone (or of a randomly initialised one), cached on disk.

A cache entry is keyed by everything the features depend on (:func:`feature_key`): the *content* of the
checkpoint's weights (:func:`checkpoint_digest`, a SHA-256 of its weight files) or the random
initialisation's seed, the backbone and dataset settings, the split and the view (crop side, mean, std).
Never by the checkpoint's path: a run retrained to the same step writes a checkpoint with the same path
and other weights, and must get fresh features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from equissl.augmentations.eval_views import resized_view
from equissl.build import build_dataset
from equissl.config import Config, to_dict
from equissl.errors import UserError

FEATURES_VERSION = 2  # bump when the extraction changes what it computes
# settings that never change an image an evaluation reads (evaluations always decode in the workers)
_DATA_KEYS_WITHOUT_EFFECT = ("num_workers", "prefetch_factor", "max_bad_fraction", "decode")


def preprocess(images: Tensor, config: Config) -> Tensor:
    """uint8 (B, 3, H, W) -> float, resized to the training crop size, normalised: the eval view."""
    return resized_view(images, config.augment.crop_size, config.augment.mean, config.augment.std)


def checkpoint_digest(checkpoint: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint's weights: its ``*.safetensors`` files (name and bytes, in name
    order), or of every file when it holds none. Equal digests: equal weights, whatever the path."""
    checkpoint = Path(checkpoint)
    files = sorted(checkpoint.glob("*.safetensors")) or sorted(p for p in checkpoint.iterdir() if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_identity(checkpoint: str | Path | None, seed: int) -> str:
    """What a backbone's weights are: ``sha256:<digest>`` of a checkpoint, or ``random-init:seed<seed>``."""
    return f"random-init:seed{seed}" if checkpoint is None else f"sha256:{checkpoint_digest(checkpoint)}"


def data_settings(config: Config) -> dict[str, Any]:
    """The ``data`` section without the settings that cannot change an image (workers, bad-file limit)."""
    return {k: v for k, v in to_dict(config.data).items() if k not in _DATA_KEYS_WITHOUT_EFFECT}


def feature_key(weights: str, config: Config, split: str, extra: dict[str, Any] | None = None) -> str:
    """Hex key of one cache entry: weights identity, backbone and data settings, split, view (crop side,
    mean, std) and ``extra`` (whatever else the extraction depends on, e.g. the objective's settings)."""
    payload = {
        "version": FEATURES_VERSION,
        "weights": weights,
        "backbone": to_dict(config.backbone),
        "data": data_settings(config),
        "split": split,
        "view": {
            "crop_size": config.augment.crop_size,
            "mean": list(config.augment.mean),
            "std": list(config.augment.std),
        },
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def labelled_dataset(config: Config, split: str) -> Dataset:
    """The labelled images of ``split`` (pretraining on unlabelled images, e.g. STL-10's, reads its
    labelled part)."""
    dataset = build_dataset(config, split)
    labelled_split = getattr(dataset, "labelled_split", None)
    dataset = labelled_split() if labelled_split is not None else dataset
    if getattr(dataset, "num_classes", 1) == 0:
        raise UserError(
            f"the {config.data.name} data in {getattr(dataset, 'root', config.data.root)} is unlabelled, so "
            "probes have no classes to score: probe the run on a labelled folder, equissl probe --run RUN "
            "--data FOLDER (FOLDER/train/<class>/...)"
        )
    return dataset


@torch.no_grad()
def extract_features(
    backbone: nn.Module, config: Config, split: str, batch_size: int = 256, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """Pooled features (N, D) and labels (N,) of every labelled image of ``split``, in dataset order."""
    dataset = labelled_dataset(config, split)
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
    weights: str,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """``extract_features`` memoised in ``cache_dir`` under :func:`feature_key` (``weights``: see
    :func:`weights_identity`)."""
    key = feature_key(weights, config, split)
    path = Path(cache_dir) / f"features-{split}-{key[:16]}.pt"
    cached = load_cache(path, key)
    if cached is not None:
        return cached["features"], cached["labels"]
    features, labels = extract_features(backbone, config, split, device=device)
    save_cache(path, {"key": key, "features": features, "labels": labels})
    return features, labels


def load_cache(path: Path, key: str) -> dict[str, Tensor] | None:
    """The tensors cached at ``path`` when they were written under ``key``, else None."""
    if not path.is_file():
        return None
    cached = torch.load(path, weights_only=True)
    return cached if cached.get("key") == key else None


def save_cache(path: Path, tensors: dict[str, Any]) -> None:
    """Write a cache entry atomically (a temporary name, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(tensors, tmp)
    tmp.replace(path)
