"""``materialise``: write a generated dataset into its folder once, atomically; shared by every generator.

A generator (``shapes3d``, ``lidar_sim``) hands :func:`materialise` its folder ``root``, the name of its
completion marker, its generation parameters and a ``write_tree`` function that fills a folder. The
guarantees, for processes of one host sharing the file system (across hosts only the rename holds):

- **A reader never sees a half-written root.** The tree is written into a temporary folder next to
  ``root``, the marker last, and the folder is then renamed into place.
- **A killed render leaves ``root`` as it was** (absent or empty; an empty one may be found absent if
  the kill falls within the swap). Its temporary folder stays behind, and the next call on this host
  removes it once the process that made it is gone.
- **Concurrent callers render once.** A per-root ``fcntl`` lock serialises them (DDP ranks calling the
  same dataset factory), and every caller checks again for a complete ``root`` after taking the lock and
  after writing (a process on another host may have finished meanwhile).
- **Nothing but temporaries is deleted.** Only an absent or empty ``root`` is rendered into. A ``root``
  holding a render with other parameters, one whose marker is unreadable, and a non-empty one without a
  marker are refused with a one-line :class:`~equissl.errors.UserError` naming the root (and the first
  settings that differ, with both values).

Next to ``root`` (in ``root.parent``)::

    .<name>.lock                        the lock file (empty; kept)
    .<name>.tmp-<host>-<pid>-<rand>/    a render in progress
    .<name>.old-<host>-<pid>-<rand>/    the empty root, moved aside for the instant of the swap

The marker ``root/<marker_name>`` is JSON (one-space indent, trailing newline)::

    {"params_sha256": sha256 of the sorted-key JSON of params, "params": params, **what write_tree returned}

Only ``params_sha256`` decides whether a render is complete, so markers written by earlier versions of
the generators stay valid.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from equissl.errors import UserError

WriteTree = Callable[[Path], Mapping[str, Any] | None]
"""Fills the empty folder it is given with the dataset; returns extra marker fields (or None)."""

SHOWN_DIFFERENCES = 3  # settings named in a refusal; more would not fit one readable line


def params_sha256(params: Mapping[str, Any]) -> str:
    """Hex sha256 of ``params`` as sorted-key JSON: the key a complete render is recognised by."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def is_complete(root: str | Path, marker_name: str, params: Mapping[str, Any]) -> bool:
    """Whether ``root`` holds a finished render made with ``params`` (an unreadable marker: False)."""
    try:
        marker = json.loads((Path(root).expanduser() / marker_name).read_text())
        return isinstance(marker, dict) and marker.get("params_sha256") == params_sha256(params)
    except (OSError, ValueError):
        return False


def keyed_root(base: Path, params: Mapping[str, Any], default_params: Mapping[str, Any]) -> Path:
    """``base`` for the default parameters, ``<base>-<first 10 hex of the params hash>`` beside it for any
    others: a default cache folder in which renders with other settings are kept apart, never refused."""
    digest = params_sha256(params)
    return base if digest == params_sha256(default_params) else base.with_name(f"{base.name}-{digest[:10]}")


def materialise(
    root: str | Path, marker_name: str, params: Mapping[str, Any], write_tree: WriteTree, what: str
) -> Path:
    """Render into ``root`` with ``write_tree`` unless a complete render of ``params`` is there; returns
    ``root`` (user home expanded).

    ``params`` must be JSON-serialisable: everything the written bytes depend on. ``what`` names the
    dataset in messages (``"shapes3d"``). ``write_tree(tmp)`` fills the empty folder ``tmp`` and may return
    extra marker fields; whatever it raises propagates, after its temporary folder is removed. Raises
    :class:`UserError` (``root`` untouched) when ``root`` holds anything but a render of ``params``.
    See the module docstring for the guarantees.
    """
    root = Path(root).expanduser()
    if is_complete(root, marker_name, params):
        return root
    refuse_unless_free(root, marker_name, params, what)  # before waiting on the lock: fail fast
    root.parent.mkdir(parents=True, exist_ok=True)
    with _render_lock(root):
        if is_complete(root, marker_name, params):  # another process rendered it while we waited
            return root
        refuse_unless_free(root, marker_name, params, what)
        _remove_dead_temporaries(root)
        tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp, old = root.parent / f".{root.name}.tmp-{tag}", root.parent / f".{root.name}.old-{tag}"
        try:
            tmp.mkdir()
            _write_marker(tmp / marker_name, params, write_tree(tmp) or {})  # last: the tree is complete
            if is_complete(root, marker_name, params):  # finished meanwhile by a process on another host
                return root
            refuse_unless_free(root, marker_name, params, what)
            if root.exists():  # empty (checked above): moved aside so that the rename cannot fail on it
                root.rename(old)
            tmp.rename(root)
        finally:
            for folder in (tmp, old):
                shutil.rmtree(folder, ignore_errors=True)
    return root


def refuse_unless_free(root: Path, marker_name: str, params: Mapping[str, Any], what: str) -> None:
    """Raise :class:`UserError` unless ``root`` is absent or an empty folder, the only roots a render may
    be written to (a complete render of ``params`` is the caller's to accept before asking)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise UserError(f"{root} exists and is not a folder: point data.root at an empty or new folder")
    if not any(root.iterdir()):
        return
    marker = root / marker_name
    if not marker.exists():
        raise UserError(
            f"{root} exists, is not empty and holds no {marker_name}: refusing to overwrite it; "
            "point data.root at an empty or new folder"
        )
    found = _marker_params(marker)
    differences = _differences(found, params)
    if not differences:  # the same settings under another hash: the marker was altered
        raise UserError(
            f"{marker} does not match its own params (params_sha256 differs): "
            f"delete {root} to re-render, or point data.root at another folder"
        )
    raise UserError(
        f"{root} holds a {what} render with {differences}: "
        "point data.root at another folder (or delete it to re-render)"
    )


def _marker_params(marker: Path) -> dict[str, Any]:
    """The ``params`` a marker holds; UserError naming the file when it is unreadable or not a marker."""
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())  # one line, whatever the decoder said
        raise UserError(
            f"{marker} is unreadable ({reason}): delete {marker.parent} to re-render, "
            "or point data.root at another folder"
        ) from None
    if not isinstance(content, dict) or not isinstance(content.get("params"), dict):
        raise UserError(
            f"{marker} holds no generation params: delete {marker.parent} to re-render, "
            "or point data.root at another folder"
        )
    return content["params"]


def _setting(key: str) -> str:
    """How a params key is named to the user: ``data.<key>``, except the generator's own version."""
    return key if key.endswith("_version") else f"data.{key}"


def _differences(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """The first settings where ``found`` and ``wanted`` differ, ``key=found, this run asks for wanted``
    joined by ``; `` (empty if none). Values are compared as the hash sees them, as JSON text: a tuple
    equals a list, but 10 differs from 10.0."""
    keys = [*wanted, *(key for key in found if key not in wanted)]
    differing = [key for key in keys if _show(found, key) != _show(wanted, key)]
    shown = [
        f"{_setting(key)}={_show(found, key)}, this run asks for {_show(wanted, key)}"
        for key in differing[:SHOWN_DIFFERENCES]
    ]
    if len(differing) > SHOWN_DIFFERENCES:
        shown.append(f"{len(differing) - SHOWN_DIFFERENCES} more")
    return "; ".join(shown)


def _show(params: Mapping[str, Any], key: str) -> str:
    return json.dumps(params[key], sort_keys=True) if key in params else "(unset)"


def _write_marker(path: Path, params: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    clash = {"params_sha256", "params"} & set(extra)
    if clash:
        raise ValueError(f"write_tree must not return the marker's own fields {sorted(clash)}")
    marker = {"params_sha256": params_sha256(params), "params": params, **extra}
    path.write_text(json.dumps(marker, indent=1) + "\n")


def _remove_dead_temporaries(root: Path) -> None:
    """Delete the temporary (and moved-aside) folders of ``root`` left by dead processes of this host.

    Another host's folders are left alone: whether their process lives cannot be told from here.
    """
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = f".{root.name}.{kind}-{host}-"
        for folder in root.parent.glob(f"{glob.escape(prefix)}*"):
            pid = folder.name[len(prefix) :].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # alive, but not ours to signal
        return True
    return True


@contextlib.contextmanager
def _render_lock(root: Path) -> Iterator[None]:
    """Serialise renders of one root across the processes (and threads) of this host."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename at the end still keeps a root whole
        yield
        return
    # flock locks an open file description: every caller opens its own, so threads exclude each other too
    with open(root.parent / f".{root.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
