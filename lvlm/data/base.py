"""What every dataset loader shares: seeded sub-sampling, random access, and the missing-data error.

A loader subclasses :class:`Dataset`, lists lightweight records (paths, ids) in ``self.items``
through :meth:`Dataset._finish`, and turns one record into a :class:`~lvlm.types.Sample` in
:meth:`Dataset._load`. ``len(ds)``, ``ds[i]`` and ``iter(ds)`` then work alike for every loader,
which is what the benchmark runner (and its Ray workers, which address samples by index) rely on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LvlmError
from ..types import Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetNotFoundError(LvlmError, FileNotFoundError):
    """A dataset that is not on disk (the message names the expected layout and where to get it)."""


def not_found(
    name: str, root: str | os.PathLike | None, missing: str, layout: str, url: str
) -> DatasetNotFoundError:
    """The one error for absent data: what is missing, the layout looked for, where it is published.

    Args:
        name: the dataset's name.
        root: the root folder that was searched, or None.
        missing: what is missing (e.g. ``no folder 'images'``).
        layout: the expected folder layout, shown as is.
        url: where the data is published.
    """
    where = f" under {str(root)!r}" if root is not None else ""
    return DatasetNotFoundError(
        f"{name}: {missing}{where}. Expected layout:\n{layout.rstrip()}\nGet it from {url}"
    )


def subsample(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """``n`` indices out of ``range(n_total)`` drawn without replacement with ``seed``, in ascending order
    (all of them when ``n`` is None or not smaller than ``n_total``).

    Args:
        n_total: the number of items.
        n: how many to draw, or None for all.
        seed: the random seed.
    """
    if n is None or n >= n_total:
        return list(range(n_total))
    if n < 0:
        raise LvlmError(f"n={n}: the number of samples must be >= 0")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_total, size=n, replace=False))


def stable_seed(*parts: Any) -> int:
    """A seed that depends only on ``parts`` (not on Python's per-process string hashing).

    Args:
        *parts: values whose ``str`` forms make the seed.
    """
    import hashlib

    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def unique(values) -> list:
    """``values`` without repeats, in first-seen order.

    Args:
        values: any iterable of hashable values.
    """
    return list(dict.fromkeys(values))


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (not recursive), sorted by name.

    Args:
        folder: the folder to list.
    """
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The image file of ``folder`` named ``stem`` + any image extension, or None.

    Args:
        folder: the folder to search.
        stem: the file name without extension.
    """
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


class Dataset:
    """Base of the registered dataset loaders: ``len``, random access ``ds[i]`` and iteration over Samples.

    Subclasses fill ``self.items`` (one record per sample, cheap to hold) and implement ``_load``.
    ``n`` / ``seed``: keep a seeded random subset of ``n`` records (all when ``n`` is None).
    """

    name = "dataset"
    items: list[Any]

    def _finish(self, items: Sequence[Any], n: int | None, seed: int) -> None:
        keep = subsample(len(items), n, seed)
        self.items = [items[i] for i in keep]

    def _load(self, item: Any) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(f"sample index {index} out of range for {len(self.items)} samples")
        return self._load(self.items[index])

    def __iter__(self) -> Iterator[Sample]:
        for item in self.items:
            yield self._load(item)

    def ids(self) -> list[str]:
        """Sample ids in order (loads each sample; loaders override this when ids are cheaper)."""
        return [s.id for s in self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"


def require_dir(path: Path, name: str, root: Any, layout: str, url: str, what: str | None = None) -> Path:
    """``path`` when it is a directory, else the dataset's not-found error.

    Args:
        path: the folder that must exist.
        name: the dataset's name (for the error).
        root: the dataset's root (for the error).
        layout: the expected folder layout (for the error).
        url: where the data is published (for the error).
        what: the folder's name in the message (default: ``path.name``).
    """
    if not path.is_dir():
        raise not_found(name, root, f"no folder {what or path.name!r} ({path})", layout, url)
    return path
