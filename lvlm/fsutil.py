"""Atomic file writes: the one way lvlm writes a file another process may read or write at the same time.

A file is written to a temporary file with a unique name (``tempfile.mkstemp``) in the destination's
folder, flushed to disk (``fsync``) and renamed over the destination (``os.replace``, atomic on POSIX and
Windows). A reader sees the old file or the new one, never a half-written one; two writers of the same
path each write their own temporary file and the last rename wins; a killed writer leaves no partial
destination (only, at worst, a hidden ``.<name>.*.tmp`` file). The file gets the permissions a plain
``open(path, "w")`` would give it (``mkstemp`` alone makes it private).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write", "atomic_write_json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", fsync: bool = True, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends without an error.

    On an error the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write (its folder is created).
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        fsync: flush the data to disk before the rename, so a crash cannot leave an empty file.
        encoding: text encoding for ``mode="w"`` (UTF-8 by default).

    Example:
        >>> with atomic_open("out/state.pt") as f:  # doctest: +SKIP
        ...     torch.save(state, f)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str | Callable[[IO[Any]], Any],
    mode: str | None = None,
    fsync: bool = True,
) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring) and return the path.

    Args:
        path: the file to write (its folder is created).
        data: ``bytes``, ``str``, or a callable given the open temporary file, e.g.
            ``lambda f: torch.save(state, f)`` or ``lambda f: np.save(f, array)``.
        mode: ``"wb"`` or ``"w"``; by default ``"w"`` for ``str`` data, else ``"wb"``.
        fsync: flush the data to disk before the rename.
    """
    if mode is None:
        mode = "w" if isinstance(data, str) else "wb"
    with atomic_open(path, mode, fsync=fsync) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
    return Path(path)


def atomic_write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 1, fsync: bool = True, **kwargs: Any
) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    Args:
        path: the file to write.
        obj: a JSON-serialisable object.
        indent: ``json.dumps`` indent (``None``: compact, one line).
        fsync: flush the data to disk before the rename (``False`` for caches that can be rebuilt).
        **kwargs: more ``json.dumps`` arguments (``default``, ``separators``, ...).
    """
    if indent is None:
        kwargs.setdefault("separators", (",", ":"))
    return atomic_write(path, json.dumps(obj, indent=indent, **kwargs), fsync=fsync)
