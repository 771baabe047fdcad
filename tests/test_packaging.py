"""Packaging and the command line around it: the licence, the version, the extras (every optional package
is imported only where its feature runs, and a missing one names its extra), the listings and
``equissl config show``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import equissl
from equissl.cli import main
from equissl.config import Config, from_dict
from equissl.registry import BACKBONES, DATASETS, OBJECTIVES

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = {
    "3d": ["open3d"],
    "slurm": ["submitit"],
    "export": ["onnx", "onnxruntime"],
    "det": ["pycocotools"],
    "track": ["wandb", "mlflow"],
    "viz": ["sklearn", "umap"],
}
DISTRIBUTIONS = {"sklearn": "scikit-learn"}  # where the import name is not the package's name


def test_licence_and_version(capsys):
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert PYPROJECT["license"] == "Apache-2.0" and PYPROJECT["license-files"] == ["LICENSE"]
    assert PYPROJECT["version"] == equissl.__version__
    try:
        main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert capsys.readouterr().out == f"equissl {equissl.__version__}\n"


def test_extras_hold_the_optional_packages():
    core = " ".join(PYPROJECT["dependencies"])
    extras = PYPROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        for module in modules:
            assert module not in core, module
            package = DISTRIBUTIONS.get(module, module)
            assert any(requirement.startswith(package) for requirement in extras[extra]), (extra, module)
    assert extras["all"] == [f"equissl[{','.join(EXTRAS)}]"]
    assert "equissl[all,docs]" in extras["dev"]
    assert extras["bench"] == ["lightly>=1.5"]  # benchmarks/peers.py only: the tests must not need it
    assert not any("bench" in requirement for requirement in extras["all"] + extras["dev"])
    assert any(requirement.startswith("torch>=") for requirement in PYPROJECT["dependencies"])


HIDDEN = """
import importlib, pkgutil, sys
for name in {modules!r}:
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
import equissl
for info in pkgutil.walk_packages(equissl.__path__, "equissl."):
    importlib.import_module(info.name)
from equissl.cli import main
sys.exit(main(["data", "make", "shapes3d", "data.root={root}"]))
"""


def test_every_module_imports_without_the_extras_and_a_feature_names_its_extra(tmp_path):
    modules = [module for names in EXTRAS.values() for module in names]
    script = HIDDEN.format(modules=modules, root=tmp_path / "shapes3d")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert done.returncode == 2, done.stderr
    expected = (
        "equissl data: error: rendering shapes3d and lidar_sim needs the optional package 'open3d': "
        "pip install 'equissl[3d]' (or pip install open3d)"
    )
    assert done.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "shapes3d").exists() and list(tmp_path.iterdir()) == []  # nothing left behind


def test_list_prints_one_line_per_entry_with_its_description(capsys):
    for what, registry in (("backbones", BACKBONES), ("objectives", OBJECTIVES), ("datasets", DATASETS)):
        assert main(["list", what]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines] == registry.names()
        for line, entry in zip(lines, registry.entries()):
            assert line.endswith(entry.meta["description"]) and entry.meta["description"]
    assert main(["list", "recipes"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(equissl.list_recipes())


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "simclr_resnet18_shapes3d", "optim.lr=0.5", "data.image_size=48"]) == 0
    shown = from_dict(Config, yaml.safe_load(capsys.readouterr().out))
    assert shown.name == "simclr_resnet18_shapes3d" and shown.optim.lr == 0.5
    assert shown.augment.crop_size == 48  # derived from data.image_size, as training resolves it
    assert main(["config", "show", "simclr_resnet18_shapes3d", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
