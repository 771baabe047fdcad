"""``equissl compare``: every report of several runs in one table, CSV and bar plot (hand-written reports,
exact table)."""

from __future__ import annotations

import csv
import json

import pytest

from equissl.cli import main
from equissl.eval.compare import collect, markdown_table


def _write(run, name, report):
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / name).write_text(json.dumps(report))


@pytest.fixture
def two_runs(tmp_path):
    a, b = tmp_path / "a" / "simclr", tmp_path / "b" / "sie"
    _write(
        a,
        "probe_fast.json",
        {
            "evaluation": "probe",
            "protocol": "fast",
            "results": {
                "pretrained": {"linear": 63.25, "knn": 51.0, "seconds": 3},
                "random init": {"linear": 39.0, "knn": 40.0},
            },
        },
    )
    _write(
        a,
        "probe_standard.json",
        {
            "evaluation": "probe",
            "protocol": "standard",
            "results": {"pretrained": {"linear": 60.0, "seconds": 9}},
        },
    )
    _write(
        a,
        "finetune_fraction-0.1.json",
        {
            "evaluation": "finetune",
            "protocol": "fraction=0.1",
            "results": {"pretrained": {"top1": 70.0}, "random init": {"top1": 30.0}},
        },
    )
    _write(
        a,
        "detection.json",
        {  # an older report without evaluation / protocol: known by its name
            "results": {"pretrained": {"AP": 12.5, "AP50": 30.0}, "random init": {"AP": 2.0, "AP50": 5.0}},
        },
    )
    _write(a, "unrelated.json", {"hello": 1})  # not a report: ignored
    _write(
        b,
        "equivariance.json",
        {
            "evaluation": "equivariance",
            "protocol": "sie",
            "results": {
                "classification_top1": {"inv": 80.0},
                "rotation_r2": {"inv": {"r2": 0.25}},
                "colour_r2": {},
                "prediction": {"val": {"MRR": 0.5, "H@1": 0.25, "PRE": 0.125}},
            },
        },
    )
    return a, b


def test_collect_makes_one_row_per_run_and_model(two_runs):
    columns, rows = collect(list(two_runs))
    assert columns == [
        "det shapes3d_det AP",
        "det shapes3d_det AP50",
        "finetune 0.1 top-1",
        "probe fast linear",
        "probe fast knn",
        "probe standard linear",
        "equiv top-1 inv",
        "equiv rot R2 inv",
        "equiv MRR val",
        "equiv H@1 val",
        "equiv PRE val",
    ]  # in the order the reports are read (file names), then run by run
    assert [(r["run"], r["model"]) for r in rows] == [
        ("simclr", "pretrained"),
        ("simclr", "random init"),
        ("sie", "pretrained"),
    ]
    assert rows[0]["probe fast linear"] == 63.25 and rows[1]["finetune 0.1 top-1"] == 30.0
    assert "probe standard linear" not in rows[1]
    table = markdown_table(columns, rows)
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0].startswith("| run | model | det shapes3d_det AP |")
    assert lines[2] == "| simclr | pretrained | 12.5 | 30.0 | 70.0 | 63.2 | 51.0 | 60.0 | - | - | - | - | - |"
    assert lines[4] == "| sie | pretrained | - | - | - | - | - | - | 80.0 | 0.250 | 0.500 | 0.250 | 0.125 |"


def test_compare_cli_prints_the_table_and_writes_csv_and_plot(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| simclr |") == 2 and "| sie |" in printed
    with open(out / "compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and rows[0]["probe fast linear"] == "63.25" and rows[2]["probe fast linear"] == ""
    assert (out / "compare.png").stat().st_size > 10_000 and (out / "compare.md").read_text().startswith(
        "| run |"
    )
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "no evaluation reports" in capsys.readouterr().err
