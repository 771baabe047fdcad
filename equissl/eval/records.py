"""Evaluation reports on disk: every evaluation writes one JSON file under ``<run>/eval/`` that says what
produced it, and a report of one protocol never replaces another protocol's.

Every report holds ``evaluation`` (``probe``, ``knn``, ``finetune``, ``equivariance``, ``detection``),
``protocol`` (e.g. ``fast`` / ``standard`` for ``probe``, ``fraction=0.1`` for ``finetune``), the
``settings`` it ran with, and, for a run's checkpoint, ``checkpoint``, ``checkpoint_sha256`` (the weights'
content) and ``step``. The file name is :func:`report_name` of the evaluation and the protocol, so the
fast and the standard probe, or two label fractions, sit side by side; ``equissl compare`` reads them all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from equissl.errors import UserError

EVALUATIONS = ("probe", "knn", "finetune", "equivariance", "detection")
# The one protocol of an evaluation whose file keeps the evaluation's bare name (knn.json,
# equivariance.json, detection.json), as those files were named before protocols were recorded.
_BARE = {"knn": "fast", "equivariance": "sie", "detection": "shapes3d_det"}
# Reports written before evaluations recorded what they are: file name -> (evaluation, protocol).
_LEGACY = {
    "linear_knn.json": ("probe", "fast"),
    "knn.json": ("knn", "fast"),
    "equivariance.json": ("equivariance", "sie"),
    "detection.json": ("detection", "shapes3d_det"),
}


def report_name(evaluation: str, protocol: str) -> str:
    """File name of a report: ``<evaluation>_<protocol>.json`` (unsafe characters become ``-``), or
    ``<evaluation>.json`` for the protocols listed in ``_BARE``."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {evaluation!r}; known: {', '.join(EVALUATIONS)}")
    if _BARE.get(evaluation) == protocol or not protocol:
        return f"{evaluation}.json"
    return f"{evaluation}_{re.sub(r'[^A-Za-z0-9.]+', '-', protocol).strip('-')}.json"


def write_report(eval_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` (with ``evaluation`` and ``protocol``) to ``eval_dir / report_name(...)``.

    Refuses to replace a file that holds another evaluation's or another protocol's report (a file
    written by hand or by an older equissl under this name): that result is kept, and the error names it.
    """
    evaluation, protocol = report.get("evaluation"), report.get("protocol")
    if evaluation is None or protocol is None:
        raise ValueError("a report needs 'evaluation' and 'protocol'")
    path = Path(eval_dir) / report_name(evaluation, protocol)
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        if (previous.get("evaluation"), previous.get("protocol")) != (evaluation, protocol):
            raise UserError(
                f"{path} holds another result ({previous.get('evaluation')!r}, protocol "
                f"{previous.get('protocol')!r}); move it away to write the {evaluation} {protocol!r} report"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)
    return path


def read_reports(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every evaluation report of a run (``<run>/eval/*.json`` with an ``evaluation`` field, or one of the
    names reports had before they recorded it), in file-name order, each with its ``path``."""
    reports = []
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(report, dict):
            continue
        if "evaluation" not in report and path.name in _LEGACY:
            report["evaluation"], report["protocol"] = _LEGACY[path.name]
        if report.get("evaluation") in EVALUATIONS:
            reports.append(dict(report, path=str(path)))
    return reports
