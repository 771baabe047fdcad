"""The shared materialiser: one render under concurrency, atomic swaps, cleanup, refusals that delete nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from equissl.datasets import materialise as mat
from equissl.errors import UserError

MARKER = "gen.json"
PARAMS = {"generator_version": 1, "views_per_object": 4, "seed": 0}
REPO = Path(__file__).resolve().parents[2]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def siblings(root: Path) -> list[str]:
    """Everything next to ``root`` but its lock file: temporaries would show here."""
    return sorted(p.name for p in root.parent.iterdir() if p.name != f".{root.name}.lock")


class Writer:
    """A write_tree that records its calls and writes two files (one in a subfolder)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.calls: list[Path] = []
        self.pause = pause
        self.lock = threading.Lock()

    def __call__(self, tmp: Path) -> dict:
        with self.lock:
            self.calls.append(tmp)
        assert tmp.is_dir() and not any(tmp.iterdir()), "write_tree gets an empty folder"
        (tmp / "a").mkdir()
        (tmp / "a" / "data.bin").write_bytes(b"\x00\x01")
        time.sleep(self.pause)  # long enough for a concurrent caller to arrive mid-render
        (tmp / "index.txt").write_text("a/data.bin\n")
        return {"summary": {"files": 2}}


def test_renders_once_with_marker_written_last_and_is_idempotent(tmp_path):
    root, write = tmp_path / "gen", Writer()
    assert not mat.is_complete(root, MARKER, PARAMS)
    assert mat.materialise(root, MARKER, PARAMS, write, "gen") == root
    marker = json.loads((root / MARKER).read_text())
    assert list(marker) == ["params_sha256", "params", "summary"]  # the layout existing caches hold
    assert marker["params"] == PARAMS and marker["params_sha256"] == mat.params_sha256(PARAMS)
    assert (root / MARKER).read_text().endswith("\n") and marker["summary"] == {"files": 2}
    assert mat.is_complete(root, MARKER, PARAMS) and not mat.is_complete(root, MARKER, {**PARAMS, "seed": 1})
    stamp = (root / MARKER).stat().st_mtime_ns
    assert mat.materialise(root, MARKER, PARAMS, write, "gen") == root
    assert len(write.calls) == 1 and (root / MARKER).stat().st_mtime_ns == stamp
    assert write.calls[0].parent == tmp_path and write.calls[0].name.startswith(
        f".gen.tmp-{socket.gethostname()}-"
    )
    assert siblings(root) == ["gen"]  # the temporary was renamed into place, nothing left beside it


def test_an_empty_root_is_rendered_into(tmp_path):
    root = tmp_path / "gen"
    root.mkdir()
    mat.materialise(root, MARKER, PARAMS, Writer(), "gen")
    assert mat.is_complete(root, MARKER, PARAMS) and siblings(root) == ["gen"]


def test_concurrent_callers_render_once(tmp_path):
    root, write = tmp_path / "gen", Writer(pause=0.3)
    results, errors = [], []

    def call() -> None:
        try:
            results.append(mat.materialise(root, MARKER, PARAMS, write, "gen"))
        except BaseException as error:  # noqa: BLE001 -- reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [root] * 3
    assert len(write.calls) == 1  # the others waited on the lock, then found the render complete
    assert mat.is_complete(root, MARKER, PARAMS) and siblings(root) == ["gen"]


KILLED_WRITER = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("materialise", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

def write(tmp):
    (tmp / "half.bin").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-render, as by the OOM killer or a cancelled job

module.materialise(sys.argv[2], "gen.json", {"generator_version": 1, "views_per_object": 4, "seed": 0},
                   write, "gen")
"""


@pytest.mark.parametrize("existing", ["absent", "empty"])
def test_a_killed_render_leaves_the_root_as_it_was_and_its_temporary_is_removed_later(tmp_path, existing):
    root = tmp_path / "gen"
    if existing == "empty":
        root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the module alone, not the equissl.datasets package: no torch or open3d in the child
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, mat.__file__, str(root)], env=env)
    assert child.wait() == -signal.SIGKILL
    assert (root.exists() and not any(root.iterdir())) if existing == "empty" else not root.exists()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".gen.tmp-")]
    assert len(left) == 1 and [p.name for p in left[0].iterdir()] == ["half.bin"]  # no marker: never complete
    assert left[0].name.startswith(f".gen.tmp-{socket.gethostname()}-{child.pid}-")

    alive = tmp_path / f".gen.tmp-{socket.gethostname()}-1-0000"  # pid 1 lives: a render in progress
    alive.mkdir()
    other_host = tmp_path / ".gen.tmp-another-host-12345-0000"  # not ours to judge
    other_host.mkdir()
    mat.materialise(root, MARKER, PARAMS, Writer(), "gen")
    assert not left[0].exists() and alive.exists() and other_host.exists()
    assert mat.is_complete(root, MARKER, PARAMS) and sorted(tree_bytes(root)) == [
        "a/data.bin",
        "gen.json",
        "index.txt",
    ]


def test_a_failing_write_leaves_nothing_that_could_look_complete(tmp_path):
    root = tmp_path / "gen"

    def failing(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"half")
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError, match="render failed"):
        mat.materialise(root, MARKER, PARAMS, failing, "gen")
    assert siblings(root) == []


def test_a_render_with_other_settings_is_refused_and_left_untouched(tmp_path):
    root = tmp_path / "shapes3d"
    mat.materialise(root, MARKER, PARAMS, Writer(), "shapes3d")
    before, write = tree_bytes(root), Writer()
    with pytest.raises(UserError) as refused:
        mat.materialise(root, MARKER, {**PARAMS, "views_per_object": 12}, write, "shapes3d")
    message = str(refused.value)
    assert message == (
        f"{root} holds a shapes3d render with data.views_per_object=4, this run asks for 12: "
        "point data.root at another folder (or delete it to re-render)"
    )
    assert write.calls == [] and tree_bytes(root) == before and siblings(root) == ["shapes3d"]


def test_a_refusal_names_the_first_differences_with_both_values_in_one_line(tmp_path):
    root = tmp_path / "gen"
    mat.materialise(root, MARKER, {**PARAMS, "rotations": "so3"}, Writer(), "gen")
    wanted = {"generator_version": 2, "views_per_object": 4, "seed": 1, "beams": 8, "range": (1.0, 2.0)}
    with pytest.raises(UserError) as refused:
        mat.materialise(root, MARKER, wanted, Writer(), "gen")
    message = str(refused.value)
    assert "\n" not in message
    assert "generator_version=1, this run asks for 2; data.seed=0, this run asks for 1; " in message
    assert "data.beams=(unset), this run asks for 8; 2 more:" in message  # range and rotations not shown


def test_a_foreign_folder_is_refused_and_kept(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(
        UserError,
        match=re.escape(f"{root} exists, is not empty and holds no {MARKER}: refusing to overwrite"),
    ):
        mat.materialise(root, MARKER, PARAMS, Writer(), "gen")
    assert tree_bytes(root) == {"thesis.tex": b"precious"} and siblings(root) == ["mine"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        mat.materialise(tmp_path / "file", MARKER, PARAMS, Writer(), "gen")


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"params_sha256": "ab", "par', "is unreadable"),
        ("[1, 2]", "holds no generation params"),
        (json.dumps({"params_sha256": "0" * 64, "params": PARAMS}), "does not match its own params"),
    ],
)
def test_a_corrupt_marker_is_refused_naming_the_file(tmp_path, content, reason):
    root = tmp_path / "gen"
    root.mkdir()
    (root / MARKER).write_text(content)
    (root / "data.bin").write_bytes(b"data")
    before = tree_bytes(root)
    with pytest.raises(UserError) as refused:
        mat.materialise(root, MARKER, PARAMS, Writer(), "gen")
    message = str(refused.value)
    assert message.startswith(f"{root / MARKER} ") and reason in message and "\n" not in message
    assert tree_bytes(root) == before and not mat.is_complete(root, MARKER, PARAMS)


def test_keyed_root_keeps_the_default_name_for_default_params_only(tmp_path):
    base = tmp_path / "gen"
    assert mat.keyed_root(base, PARAMS, dict(PARAMS)) == base
    other = mat.keyed_root(base, {**PARAMS, "seed": 1}, PARAMS)
    assert other == tmp_path / f"gen-{mat.params_sha256({**PARAMS, 'seed': 1})[:10]}"


def test_write_tree_may_not_overwrite_the_marker_fields(tmp_path):
    with pytest.raises(ValueError, match="params_sha256"):
        mat.materialise(tmp_path / "gen", MARKER, PARAMS, lambda tmp: {"params_sha256": "x"}, "gen")
    assert siblings(tmp_path / "gen") == []
