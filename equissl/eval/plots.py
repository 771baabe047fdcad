"""Figures a person can look at: probe accuracies and the pretraining curves of a run (with the online
val kNN), embedding maps, equivariance plots and the comparison of runs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def probe_figure(run_dir: Path, results: dict[str, dict[str, float]], out: Path, title: str) -> Path:
    """Left: top-1 per evaluation and model (e.g. linear / kNN x pretrained / random init).
    Right: the pretraining loss and the online probe's accuracy over steps."""
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    evaluations = sorted({e for scores in results.values() for e in scores})
    width = 0.8 / max(1, len(results))
    for i, (model, scores) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(evaluations))]
        values = [scores.get(e, 0.0) for e in evaluations]
        drawn = bars.bar(xs, values, width=width, label=model)
        bars.bar_label(drawn, fmt="%.1f", fontsize=8)
    bars.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(evaluations))], evaluations)
    bars.set_ylabel("val top-1 (%)")
    bars.set_ylim(0, 100)
    bars.legend()
    bars.set_title("frozen-feature probes")
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows if "loss" in r]
    curves.plot(steps, [r["loss"] for r in rows if "loss" in r], color="tab:blue", label="pretraining loss")
    curves.set_xlabel("step")
    curves.set_ylabel("loss", color="tab:blue")
    probe_rows = [r for r in rows if "probe/acc" in r]
    knn_rows = [r for r in rows if "val/knn_top1" in r]
    if probe_rows or knn_rows:
        twin = curves.twinx()
        if probe_rows:
            twin.plot(
                [r["step"] for r in probe_rows],
                [100 * r["probe/acc"] for r in probe_rows],
                color="tab:orange",
                label="online probe top-1 (train batch)",
            )
        if knn_rows:
            twin.plot(
                [r["step"] for r in knn_rows],
                [r["val/knn_top1"] for r in knn_rows],
                color="tab:green",
                marker="o",
                label="online kNN top-1 (val subset)",
            )
        twin.set_ylabel("top-1 (%)")
        twin.set_ylim(0, 100)
        twin.legend(loc="center right", fontsize=8)
    curves.set_title("pretraining")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def embedding_figure(panels: dict[str, tuple], class_names: list[str], out: Path, title: str) -> Path:
    """One scatter per model: ``panels[name] = (coords (N, 2), labels (N,), 2-D 10-NN top-1 %)``, points
    coloured by class (legend with ``class_names`` when given)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.6), squeeze=False)
    classes = sorted({int(c) for _, labels, _ in panels.values() for c in labels.tolist()})
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for axis, (name, (coords, labels, knn)) in zip(axes[0], panels.items()):
        for index, label in enumerate(classes):
            rows = labels == label
            name_of = class_names[label] if label < len(class_names) else str(label)
            axis.scatter(
                coords[rows, 0].numpy(),
                coords[rows, 1].numpy(),
                s=6,
                alpha=0.75,
                color=colours(index % colours.N),
                label=name_of,
            )
        axis.set_title(f"{name}: 10-NN top-1 in the map {knn:.1f}%")
        axis.set_xticks([])
        axis.set_yticks([])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", markerscale=3, fontsize=9, title="class")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def comparison_figure(columns: list[str], rows: list[dict], out: Path) -> Path:
    """One grouped bar plot: a group per column (percentages), a bar per row (run, model)."""
    fig, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) * max(1, len(rows)) ** 0.5 + 3), 4.8))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(columns))]
        values = [row.get(name, float("nan")) for name in columns]
        hatch = "//" if row["model"] != "pretrained" else None
        drawn = axis.bar(xs, values, width=width, label=f"{row['run']} ({row['model']})", hatch=hatch)
        axis.bar_label(drawn, fmt="%.1f", fontsize=7)
    axis.set_xticks(
        [j + width * (len(rows) - 1) / 2 for j in range(len(columns))], columns, rotation=20, ha="right"
    )
    axis.set_ylabel("%")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8)
    axis.set_title("evaluations (val top-1, COCO AP)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
