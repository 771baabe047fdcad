"""Name -> factory registries for backbones, objectives, datasets and view makers.

Each entry pairs a factory with the dataclass that types its config section, so that a recipe's
``backbone:`` / ``objective:`` / ``data:`` section is validated against the chosen entry before any work
starts (see :mod:`equissl.config`), and carries the facts that entry points need about it (``meta``),
so that they read data instead of switching on names:

- backbones: ``probe`` -- ``"linear"`` (class-label probes on pooled features, the default) or ``"bev"``
  (LiDAR encoders: the bird's-eye-view occupancy probe);
- datasets: ``embedded`` -- rendered by equissl itself (``equissl data make NAME``), and ``source`` --
  the view source it is read with once rendered;
- every entry: ``description``, one line for listings.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from equissl.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    config_cls: type
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A named table of factories; ``register`` is used as a decorator on the factory."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, config_cls: type, **meta: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``factory`` under ``name``; ``meta`` are the entry's facts (module docstring).
        ``description`` defaults to the first line of the factory's docstring."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            description = meta.pop("description", None) or (factory.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, factory, config_cls, {"description": description, **meta})
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        _import_builtin_modules()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> list[str]:
        _import_builtin_modules()
        return sorted(self._entries)

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).factory(*args, **kwargs)

    def entries(self, **meta: Any) -> list[Entry]:
        """Entries whose meta has every given value, by name: ``DATASETS.entries(embedded=True)``."""
        _import_builtin_modules()
        return [
            self._entries[name]
            for name in sorted(self._entries)
            if all(self._entries[name].meta.get(key) == value for key, value in meta.items())
        ]


BACKBONES = Registry("backbone")
OBJECTIVES = Registry("objective")
DATASETS = Registry("dataset")
# ViewSpec.source -> view-maker factory, called with the whole Config; "image" and "object" are built in.
VIEW_MAKERS = Registry("view source")

# Modules whose import registers the built-in entries. Imported lazily so that importing the registry
# (e.g. from config.py) stays cheap and free of cycles.
_BUILTIN_MODULES = (
    "equissl.backbones",
    "equissl.ssl",
    "equissl.datasets",
    "equissl.augmentations",
)
_imported = False


def _import_builtin_modules() -> None:
    global _imported
    if _imported:
        return
    _imported = True
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
