"""What the top principal components of a run's features encode on shapes3d (prints a Markdown table).

For each ``LABEL=PATH`` (PATH: a probe's feature cache, ``RUN/eval/features-train-*.pt``, 6,000 training
views in dataset order), centre the features and report:

- the effective rank ``exp(-sum p_k log p_k)`` of the variance shares ``p_k``;
- the share of variance of PC1 and PC2;
- the R^2 of PC1 and PC2 regressed on the floor hue (its cos and sin), on the image's mean RGB and on the
  object (its mean over the object's 20 views);
- the share of the centred variance held by the 5% of views with the largest feature norm, and their
  classes;
- the spread of the feature norms: the 99th percentile over the median.

    python benchmarks/feature_pcs.py "simclr=runs/t/simclr/eval/features-train-0123.pt" ...

Reads the default shapes3d render (``~/.cache/equissl/shapes3d``); used in
docs/reports/2026-12-04-equal-time-bases.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from equissl.datasets.shapes3d import Shapes3DConfig, build_shapes3d
from equissl.latents import LATENT_NAMES

FLOOR_HUE = LATENT_NAMES.index("floor_hue")  # its latent is a fraction of a turn


def view_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 7) latents, (N, 3) mean RGB (0-255) and (N,) object index of the training views, dataset order."""
    ds = build_shapes3d(Shapes3DConfig(), "train", "image", 1, 0)
    items = [ds[index] for index in range(len(ds))]
    latents = np.stack([item["latent"].numpy() for item in items])
    rgb = np.stack([item["image"].float().mean((1, 2)).numpy() for item in items])
    return latents, rgb, np.array([ds.locate(index)[0] for index in range(len(ds))])


def explained(y: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """R^2 of each column of y (N, K) given its fitted values (N, K)."""
    return 1 - ((y - fitted) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def r2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """R^2 of each column of y (N, K) by least squares on x (N, P), x holding a constant column."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return explained(y, x @ beta)


def r2_by_group(y: np.ndarray, group: np.ndarray) -> np.ndarray:
    """R^2 of each column of y (N, K) by its mean within each group (N,) of int labels."""
    means = np.zeros((group.max() + 1, y.shape[1]))
    np.add.at(means, group, y)
    means /= np.bincount(group)[:, None]
    return explained(y, means[group])


def norm_spread(norm: np.ndarray) -> float:
    """99th-percentile over median of feature norms (N,): 1 when every view's features have the same
    length; large when a few views' features outgrow the rest."""
    return float(np.percentile(norm, 99) / np.median(norm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH of a features-train-*.pt cache")
    args = parser.parse_args()
    latents, rgb, objects = view_table()
    ones = np.ones((len(latents), 1))
    turn = 2 * np.pi * latents[:, FLOOR_HUE : FLOOR_HUE + 1]
    hue_design = np.hstack([ones, np.cos(turn), np.sin(turn)])
    rgb_design = np.hstack([ones, rgb])
    print(
        "| run | effective rank | PC1 / PC2 share (%) | R^2 on floor hue | R^2 on mean RGB | R^2 on object "
        "| top-5% norm views: variance share (%), classes | norm p99 / median |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for item in args.runs:
        label, path = item.split("=", 1)
        cache = torch.load(path, weights_only=True)
        x, labels = cache["features"].double().numpy(), cache["labels"].numpy()
        if len(x) != len(latents):
            raise SystemExit(
                f"{path}: {len(x)} features, expected {len(latents)} (the default shapes3d train split)"
            )
        centred = x - x.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        share = s**2 / (s**2).sum()
        pcs = u[:, :2] * s[:2]
        norm = np.linalg.norm(x, axis=1)
        top = norm > np.percentile(norm, 95)
        top_share = 100 * (centred[top] ** 2).sum() / (centred**2).sum()
        counts = np.bincount(labels[top], minlength=labels.max() + 1)
        classes = ", ".join(f"{c}: {n}" for c, n in sorted(enumerate(counts), key=lambda cn: -cn[1])[:3])

        def pair(values: np.ndarray) -> str:
            return " / ".join(f"{v:.2f}" for v in values)

        print(
            f"| {label} | {np.exp(-(share * np.log(share + 1e-30)).sum()):.1f} | "
            f"{100 * share[0]:.1f} / {100 * share[1]:.1f} | {pair(r2(pcs, hue_design))} | "
            f"{pair(r2(pcs, rgb_design))} | {pair(r2_by_group(pcs, objects))} | {top_share:.0f} ({classes}) | "
            f"{norm_spread(norm):.1f} |"
        )


if __name__ == "__main__":
    main()
