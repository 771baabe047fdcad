"""``equissl embed``: val embeddings of a run's frozen backbone, saved as arrays and drawn as a 2-D map
coloured by class (UMAP, t-SNE or PCA), optionally beside a randomly initialised backbone's.

The features are those of the probes (:func:`equissl.eval.features.cached_features`: the whole image
resized to ``augment.crop_size``, normalised, the backbone in eval mode), for at most ``max_points`` val
images (evenly spaced over the split, so class-ordered datasets keep every class's share), L2-normalised
-- the geometry the kNN reads -- and projected to 2-D:

- ``pca`` -- the top two principal components (torch SVD; no extra package);
- ``tsne`` -- scikit-learn's ``TSNE`` (PCA initialisation, ``perplexity``; the ``viz`` extra);
- ``umap`` -- umap-learn's ``UMAP`` (``neighbours``, ``min_dist``; the ``viz`` extra).

Saved under ``<run>/eval/embed/``: ``<model>_val_features.npy`` (N, D) float32, ``<model>_val_labels.npy``
(N,) int64, ``<model>_val_<method>.npy`` (N, 2) float32 for ``pretrained`` (and ``random-init``), and the
figure ``embed_<method>.png``. Each panel's title gives the leave-one-out 10-NN top-1 in the 2-D map, a
number for how well the classes separate there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from equissl.errors import MissingExtraError
from equissl.eval.features import cached_features, labelled_dataset, weights_identity
from equissl.launch.online_eval import fixed_indices
from equissl.runs import checkpoint_step, load_backbone, load_run

METHODS = ("umap", "tsne", "pca")


@dataclass
class EmbedConfig:
    """Settings of ``equissl embed`` (``KEY=VALUE`` after the command)."""

    max_points: PositiveInt = 5000  # val images drawn, evenly spaced over the split
    perplexity: PositiveFloat = 30.0  # t-SNE (lowered to (N - 1) / 3 for small N)
    neighbours: PositiveInt = 15  # UMAP n_neighbors (at most N - 1)
    min_dist: NonNegativeFloat = 0.1  # UMAP
    seed: NonNegativeInt = 0


def pca_2d(x: Tensor) -> Tensor:
    """(N, D) -> (N, 2): coordinates on the top two principal axes of the centred rows. Each axis's sign
    makes the coordinate of largest magnitude positive, so the map does not flip between runs."""
    centred = x.double() - x.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    coords = centred @ vh[:2].T
    if coords.shape[1] < 2:  # one feature: the second axis is empty
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1], dtype=coords.dtype)], 1)
    signs = torch.sign(coords.gather(0, coords.abs().argmax(0, keepdim=True)))
    return (coords * torch.where(signs == 0, 1.0, signs)).float()


def tsne_2d(x: Tensor, perplexity: float, seed: int) -> Tensor:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise MissingExtraError("the t-SNE plot (--plot tsne)", "viz", "scikit-learn") from None
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(x.double().numpy())).float()


def umap_2d(x: Tensor, neighbours: int, min_dist: float, seed: int) -> Tensor:
    try:
        import umap
    except ImportError:
        raise MissingExtraError("the UMAP plot (--plot umap)", "viz", "umap-learn") from None
    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(neighbours, len(x) - 1), min_dist=min_dist, random_state=seed
    )
    return torch.from_numpy(np.asarray(reducer.fit_transform(x.numpy()))).float()


def project(x: Tensor, method: str, cfg: EmbedConfig) -> Tensor:
    """(N, D) features -> (N, 2) map by ``method``, after L2-normalising the rows."""
    x = F.normalize(x.float(), dim=1)
    if method == "pca":
        return pca_2d(x)
    if method == "tsne":
        return tsne_2d(x, cfg.perplexity, cfg.seed)
    if method == "umap":
        return umap_2d(x, cfg.neighbours, cfg.min_dist, cfg.seed)
    raise ValueError(f"unknown projection {method!r}; known: {', '.join(METHODS)}")


def map_knn_top1(coords: Tensor, labels: Tensor, k: int = 10) -> float:
    """Leave-one-out k-NN top-1 (%) in the 2-D map: each point's k nearest other points vote (one vote
    each, ties to the smallest label)."""
    k = min(k, len(coords) - 1)
    if k < 1:
        return float("nan")
    distances = torch.cdist(coords.double(), coords.double())
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(k, largest=False).indices
    votes = torch.zeros(len(coords), int(labels.max()) + 1, dtype=torch.long)
    votes.scatter_add_(1, labels[neighbours], torch.ones_like(neighbours))
    return 100.0 * float((votes.argmax(1) == labels).double().mean())


def embed_run(
    run_dir: str | Path,
    method: str = "tsne",
    cfg: EmbedConfig | None = None,
    checkpoint: str | Path | None = None,
    compare_random: bool = False,
) -> dict:
    """Embed the run's val images (and a random initialisation's), save arrays and the figure."""
    from equissl.eval.plots import embedding_figure

    cfg = cfg or EmbedConfig()
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; known: {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    config, path = load_run(run_dir, checkpoint)
    out_dir = run_dir / "eval" / "embed"
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = labelled_dataset(config, "val")
    names = list(getattr(dataset, "class_names", []) or [])
    panels, files = {}, {}
    models = [("pretrained", path)] + ([("random init", None)] if compare_random else [])
    for name, weights in models:
        backbone = load_backbone(config, weights, seed=config.trainer.seed)
        identity = weights_identity(weights, config.trainer.seed)
        features, labels = cached_features(backbone, config, "val", run_dir / "eval", identity, device)
        rows = fixed_indices(len(labels), cfg.max_points)
        features, labels = features[rows], labels[rows]
        coords = project(features, method, cfg)
        stem = name.replace(" ", "-")
        for suffix, array in (("features", features), ("labels", labels), (method, coords)):
            file = out_dir / f"{stem}_val_{suffix}.npy"
            np.save(file, array.numpy())
            files[f"{stem}_{suffix}"] = str(file)
        panels[name] = (coords, labels, map_knn_top1(coords, labels))
    title = (
        f"{config.objective.name} / {config.backbone.name} on {config.data.name}, step "
        f"{checkpoint_step(path)}: val embeddings ({method.upper() if method != 'tsne' else 't-SNE'})"
    )
    figure = embedding_figure(panels, names, out_dir / f"embed_{method}.png", title)
    return {
        "run": str(run_dir),
        "method": method,
        "points": len(next(iter(panels.values()))[1]),
        "map_knn_top1": {name: panel[2] for name, panel in panels.items()},
        "files": files,
        "figure": str(figure),
        "settings": dataclasses.asdict(cfg),
    }


def format_embed(report: dict) -> str:
    lines = [f"{report['run']}: {report['points']} val embeddings, {report['method']} map"]
    for name, top1 in report["map_knn_top1"].items():
        lines.append(f"  {name:<12} 10-NN top-1 in the 2-D map {top1:5.1f}%")
    lines.append(f"  figure: {report['figure']}")
    return "\n".join(lines)
