"""equissl: self-supervised pretraining of vision backbones with equivariant objectives.

The Python API (:mod:`equissl.api`, docs/python.md): ``pretrain``, ``load_backbone``, ``probe``,
``export``, ``list_recipes``, ``list_backbones``, ``list_objectives``, ``list_datasets``. They are
imported on first use, so ``import equissl`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "InputTransform",
    "Run",
    "__version__",
    "export",
    "list_backbones",
    "list_datasets",
    "list_objectives",
    "list_recipes",
    "load_backbone",
    "make_config",
    "pretrain",
    "probe",
]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from equissl import api

        return getattr(api, name)
    raise AttributeError(f"module 'equissl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
