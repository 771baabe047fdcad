"""Figures a person can look at: probe accuracies and the pretraining curves of a run."""

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
    if probe_rows:
        twin = curves.twinx()
        twin.plot(
            [r["step"] for r in probe_rows],
            [100 * r["probe/acc"] for r in probe_rows],
            color="tab:orange",
            label="online probe top-1 (train batch)",
        )
        twin.set_ylabel("online probe top-1 (%)", color="tab:orange")
    curves.set_title("pretraining")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
