"""The layering of docs/design.md, enforced on the source: lower layers never import higher ones.

Imports are read with ``ast`` (top-level and function-local alike), so a lazy import inside a function
counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "equissl"
LEAVES = (
    "types",
    "errors",
    "distributed",
    "groups",
    "rotations",
    "latents",
    "config",
    "registry",
    "recipes",
    "knn",
)
BLOCKS = ("ssl", "backbones", "heads", "augmentations", "datasets")
# module prefix -> what it must never import
FORBIDDEN = {
    **{
        f"equissl.{leaf}": (
            "equissl.launch",
            "equissl.eval",
            "equissl.export",
            "equissl.cli",
            "equissl.runs",
            "equissl.build",
            *(f"equissl.{b}" for b in BLOCKS),
        )
        for leaf in LEAVES
    },
    **{
        f"equissl.{block}": (
            "equissl.launch",
            "equissl.eval",
            "equissl.export",
            "equissl.cli",
            "equissl.runs",
            "equissl.build",
        )
        for block in BLOCKS
    },
    "equissl.eval": ("equissl.launch.trainer", "equissl.cli", "equissl.export"),
    "equissl.export": ("equissl.launch.trainer", "equissl.cli"),
    "equissl.runs": ("equissl.launch.trainer", "equissl.eval", "equissl.export", "equissl.cli"),
    "equissl.build": ("equissl.launch", "equissl.eval", "equissl.export", "equissl.cli", "equissl.runs"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    name = module_name(path)
    rules = [
        banned for prefix, banned in FORBIDDEN.items() if name == prefix or name.startswith(prefix + ".")
    ]
    imported = imported_modules(path)
    wrong = sorted(m for m in imported for banned in rules for b in banned if m == b or m.startswith(b + "."))
    assert not wrong, f"{name} imports {wrong}"


def test_the_rules_catch_a_violation(tmp_path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from equissl.launch.trainer import Trainer\n")
    assert "equissl.launch.trainer" in imported_modules(module)
