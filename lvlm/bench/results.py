"""``results.jsonl``: one JSON row per (combination, sample), appended and committed as it completes.

Commit discipline: a row is one ``write`` of its JSON text plus the newline, then ``flush`` (the row is
then safe from a killed process) and ``fsync`` (safe from a crashed machine) at most ``fsync_interval``
seconds later (0: after every row); a row counts as committed only when its newline is in the file.
Opening the log drops a trailing partial line (a run killed mid-write) and reads the committed keys, so a
resumed run neither loses nor repeats a row; ``append`` refuses a key that is already committed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    """The ``(combo, sample)`` key that identifies a result row.

    Args:
        row: a result row with ``combo`` and ``sample`` keys.
    """
    return (row["combo"], row["sample"])


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    return obj


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The committed rows of a results file (a partial last line is ignored; repeated keys kept once).

    Args:
        path: a results file, or a run directory holding one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        return []
    rows, seen = [], set()
    for row in _parse(path.read_bytes()):
        k = row_key(row)
        if k not in seen:
            seen.add(k)
            rows.append(row)
    return rows


def _parse(data: bytes) -> Iterator[dict[str, Any]]:
    end = data.rfind(b"\n")
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a damaged line (should not happen with the commit discipline): skip it
        if isinstance(row, dict) and "combo" in row and "sample" in row:
            yield row


class ResultsLog:
    """Append-only, crash-safe results file; ``done`` holds the committed (combo, sample) keys.

    Args:
        path: the JSON-lines results file (created with its directory when missing; committed rows are read
            back).
        fsync_interval: seconds between ``fsync`` calls (each row is flushed at once, fsynced at most once per
            interval).
    """

    def __init__(self, path: str | os.PathLike, fsync_interval: float = 1.0):
        self.path = Path(path)
        self.fsync_interval = fsync_interval
        self._synced = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[str, str]] = set()
        self.count = 0
        if self.path.is_file():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a partial last line from a killed run: drop it
                with self.path.open("r+b") as f:
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())
            for row in _parse(data[:end]):
                self.done.add(row_key(row))
            self.count = len(self.done)
        self._f = self.path.open("ab")

    def append(self, row: dict[str, Any]) -> bool:
        """Commit one row (False, and nothing written, when its key is already committed).

        Args:
            row: the result row (JSON-serialisable, with ``combo`` and ``sample`` keys).
        """
        key = row_key(row)
        if key in self.done:
            return False
        line = json.dumps(_clean(row), separators=(",", ":"), allow_nan=False).encode() + b"\n"
        self._f.write(line)
        self._f.flush()
        if time.monotonic() - self._synced >= self.fsync_interval:
            os.fsync(self._f.fileno())
            self._synced = time.monotonic()
        self.done.add(key)
        self.count += 1
        return True

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
