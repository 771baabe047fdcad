"""The errors equissl raises on purpose, and how the command line reports them.

- :class:`UserError` -- the user's input is wrong (a config key or value, a missing file, a checkpoint
  that does not fit): ``equissl`` prints one line naming the key or file and exits with status 2.
- :class:`RunStopped` -- a run stopped on purpose to protect the user's work (non-finite loss, too many
  unreadable files, a data item that fails): one line, exit status 3.
- Anything else is a bug in equissl: the command line prints the traceback and asks for a report.

A leaf module: every layer may import it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(ValueError):
    """A wrong input from the user, reported in one line (exit status 2). Subclasses ValueError so that
    callers of the Python API can catch the usual exception."""


class ConfigError(UserError):
    """A recipe or override that does not fit the typed config."""


class MissingExtraError(UserError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the optional package {module!r}: pip install 'equissl[{extra}]' "
            f"(or pip install {module})"
        )
        self.extra = extra


class RunStopped(RuntimeError):
    """A run stopped on purpose, leaving its last complete checkpoint (exit status 3)."""


class NonFiniteLossError(RunStopped):
    """The loss or the gradient norm became NaN or infinite; the run stops instead of training on garbage."""


class BadDataError(RunStopped):
    """More than ``data.max_bad_fraction`` of the items read so far were unreadable."""


class DataItemError(RunStopped):
    """Reading one dataset item failed in a way the dataset does not handle; names the item's file."""


def import_extra(module: str, feature: str, extra: str) -> ModuleType:
    """``module`` imported, or a one-line :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(feature, extra, module) from error
