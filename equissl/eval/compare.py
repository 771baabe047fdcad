"""``equissl compare RUN [RUN ...]``: every evaluation report of several runs in one table.

Reads each run's reports (:func:`equissl.eval.records.read_reports`: probe (fast and standard), knn,
finetune (each label fraction), equivariance, detection (each data source)) and makes one row per run
and model (the run's ``pretrained`` backbone, and its ``random init`` baseline where an evaluation ran
one), one column per figure:

| evaluation | columns |
|---|---|
| probe, knn | ``probe <protocol> linear``, ``probe <protocol> knn``, ``knn`` (val top-1 %) |
| finetune | ``finetune <fraction> top-1`` (val top-1 %) |
| equivariance | ``equiv top-1 <part>`` (%), ``equiv rot R2 <part>``, ``equiv colour R2 <part>``, ``equiv MRR val``, ``equiv H@1 val``, ``equiv PRE val`` |
| detection | ``det <data> AP``, ``det <data> AP50`` (COCO box AP, %) |

Output: the Markdown table (printed), the same as CSV, and one grouped bar plot of the percentage columns
(top-1 and AP), one bar per row.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from equissl.errors import UserError
from equissl.eval.records import read_reports

PERCENT_MARKERS = ("top-1", "linear", "knn", " AP")


def _probe_columns(report: dict) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for model, scores in report.get("results", {}).items():
        for method in ("linear", "knn"):
            if method in scores:
                name = "knn" if report["evaluation"] == "knn" else f"probe {report['protocol']} {method}"
                rows.setdefault(model, {})[name] = scores[method]
    return rows


def _finetune_columns(report: dict) -> dict[str, dict[str, float]]:
    fraction = report["protocol"].removeprefix("fraction=")
    return {
        model: {f"finetune {fraction} top-1": result["top1"]}
        for model, result in report.get("results", {}).items()
    }


def _equivariance_columns(report: dict) -> dict[str, dict[str, float]]:
    results, columns = report.get("results", {}), {}
    for part, top1 in results.get("classification_top1", {}).items():
        columns[f"equiv top-1 {part}"] = top1
    for key, label in (("rotation_r2", "rot R2"), ("colour_r2", "colour R2")):
        for part, scores in results.get(key, {}).items():
            columns[f"equiv {label} {part}"] = scores["r2"]
    prediction = (results.get("prediction") or {}).get("val") or {}
    for key in ("MRR", "H@1", "PRE"):
        if key in prediction:
            columns[f"equiv {key} val"] = prediction[key]
    return {"pretrained": columns}


def _detection_columns(report: dict) -> dict[str, dict[str, float]]:
    data = report.get("data", {}).get("name") or report["protocol"]
    return {
        model: {f"det {data} AP": result["AP"], f"det {data} AP50": result["AP50"]}
        for model, result in report.get("results", {}).items()
    }


_COLUMNS = {
    "probe": _probe_columns,
    "knn": _probe_columns,
    "finetune": _finetune_columns,
    "equivariance": _equivariance_columns,
    "detection": _detection_columns,
}


def _run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [path.name for path in run_dirs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, run_dirs)]


def collect(run_dirs: list[str | Path]) -> tuple[list[str], list[dict]]:
    """(columns, rows): one row ``{"run", "model", <column>: value}`` per run and model."""
    run_dirs = [Path(run) for run in run_dirs]
    rows, columns = [], []
    for label, run in zip(_run_labels(run_dirs), run_dirs):
        reports = read_reports(run)
        if not reports:
            raise UserError(f"{run}: no evaluation reports in {run / 'eval'} (run `equissl probe` first)")
        by_model: dict[str, dict[str, float]] = {}
        for report in reports:
            for model, values in _COLUMNS[report["evaluation"]](report).items():
                by_model.setdefault(model, {}).update(values)
                columns.extend(name for name in values if name not in columns)
        for model in sorted(by_model, key=lambda m: (m != "pretrained", m)):
            rows.append({"run": label, "model": model, **by_model[model]})
    return columns, rows


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if abs(value) >= 1.5 else f"{value:.3f}"


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    header = ["run", "model", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["run"], row["model"], *(_cell(row.get(name)) for name in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(columns: list[str], rows: list[dict], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["run", "model", *columns], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out


def percent_columns(columns: list[str]) -> list[str]:
    """The columns in percent (top-1, AP), which share one axis in the bar plot."""
    return [name for name in columns if any(marker in name for marker in PERCENT_MARKERS)]


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path = "compare") -> dict:
    """Collect, then write ``<out_dir>/compare.md``, ``compare.csv`` and ``compare.png``."""
    from equissl.eval.plots import comparison_figure

    columns, rows = collect(run_dirs)
    out_dir = Path(out_dir)
    table = markdown_table(columns, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(table + "\n")
    csv_path = write_csv(columns, rows, out_dir / "compare.csv")
    figure = comparison_figure(percent_columns(columns), rows, out_dir / "compare.png")
    return {"table": table, "csv": str(csv_path), "figure": str(figure), "columns": columns, "rows": rows}
