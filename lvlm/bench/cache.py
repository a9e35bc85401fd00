"""Caches of the expensive stages, so a C x S matrix costs S generator passes per image, not C x S.

- :class:`CachedGenerator` wraps a mask generator: candidates are computed once per (generator config,
  image), kept in memory for the current image and on disk (masks as COCO RLE) for later runs,
  resumed runs and other workers;
- :class:`CachedPrompter` does the same for a prompter's box / point prompts per (config, image, text).

Disk entries are written with :func:`lvlm.fsutil.atomic_write_json`, so a killed run or two workers
writing the same entry never leave a half-written file behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import rle
from ..components import MaskGenerator, Prompter, image_key
from ..fsutil import atomic_write_json
from ..types import Candidates, Prompts


def _floats(a: np.ndarray | None) -> list[float] | None:
    return None if a is None else [float(v) for v in np.asarray(a, np.float32).reshape(-1)]


def candidates_to_json(c: Candidates) -> dict[str, Any]:
    """The JSON-ready dict of one image's candidates (masks as COCO RLE strings; scores, boxes, stability
    as lists).

    Args:
        c: the candidates to store.
    """
    h, w = c.shape
    return {
        "size": [int(h), int(w)],
        "masks": rle.encode_many(c.masks),
        "boxes": _floats(c.boxes),
        "scores": _floats(c.scores),
        "stability": _floats(c.stability),
        "source": c.source,
    }


def candidates_from_json(d: dict[str, Any]) -> Candidates:
    """The :class:`Candidates` stored by :func:`candidates_to_json`.

    Args:
        d: the dict read back from the JSON file.
    """
    h, w = d["size"]
    masks = rle.decode_many(d["masks"], h, w)
    n = len(masks)
    boxes = np.asarray(d["boxes"], np.float32).reshape(n, 4) if d.get("boxes") is not None else None
    stab = np.asarray(d["stability"], np.float32) if d.get("stability") is not None else None
    return Candidates(
        masks,
        boxes=boxes,
        scores=np.asarray(d["scores"], np.float32),
        stability=stab,
        source=d.get("source", ""),
    )


class ImageContext:
    """The current image and its content hash, computed once per sample and shared by every cache.

    It holds a reference to the image, so matching by data pointer is safe while it is current.
    """

    def __init__(self) -> None:
        self.image: np.ndarray | None = None
        self.key: str | None = None

    def set(self, image: np.ndarray) -> str:
        """Make ``image`` the current image and return its content hash.

        Args:
            image: the H x W x 3 uint8 image of the sample being run.
        """
        self.image, self.key = image, image_key(image)
        return self.key

    def key_for(self, image: np.ndarray) -> str:
        """The content hash of ``image``: the current key when it is the current image's array, else hashed
        anew.

        Args:
            image: an H x W x 3 image array.
        """
        cur = self.image
        if (
            cur is not None
            and image.shape == cur.shape
            and image.dtype == cur.dtype
            and image.__array_interface__["data"][0] == cur.__array_interface__["data"][0]
            and image.strides == cur.strides
        ):
            return self.key  # type: ignore[return-value]
        return image_key(image)


class CachedGenerator(MaskGenerator):
    """A mask generator whose output is computed once per image: memory (last image) > disk > compute.

    Args:
        generator: the wrapped mask generator.
        directory: where the candidates are stored (one ``<image key>.json`` per image), or None for memory
            only.
        context: the shared current-image context (a new one when None).
    """

    def __init__(self, generator: MaskGenerator, directory: Path | None, context: ImageContext | None = None):
        self.generator = generator
        self.directory = Path(directory) if directory is not None else None
        self.context = context or ImageContext()
        self._last: tuple[str, Candidates] | None = None
        self.passes = 0  # forward passes of the wrapped generator
        self.disk_hits = 0

    def generate(self, image: np.ndarray) -> Candidates:
        key = self.context.key_for(image)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        path = self.directory / f"{key}.json" if self.directory is not None else None
        cand = None
        if path is not None and path.is_file():
            try:
                cand = candidates_from_json(json.loads(path.read_text()))
                self.disk_hits += 1
            except (ValueError, KeyError, OSError):
                cand = None  # unreadable entry: recompute and overwrite
        if cand is None:
            cand = self.generator.generate(image)
            self.passes += 1
            if path is not None:
                atomic_write_json(path, candidates_to_json(cand), indent=None, fsync=False)
        self._last = (key, cand)
        return cand

    def __getattr__(self, name: str) -> Any:  # expose the wrapped generator's attributes
        if name in ("generator", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.generator, name)


def _arr(a: np.ndarray | None) -> list | None:
    return None if a is None else np.asarray(a).tolist()


class CachedPrompter(Prompter):
    """A prompter whose prompts are computed once per (image, text): memory (last image) > disk > compute.

    Extras (saliency maps, ...) are kept in memory only; prompts read back from disk come with none.

    Args:
        prompter: the wrapped prompter.
        directory: where the prompts are stored, one JSON file per (image, text), or None for memory
            only.
        context: the shared current-image context (a new one when None).
    """

    def __init__(self, prompter: Prompter, directory: Path | None, context: ImageContext | None = None):
        self.prompter = prompter
        self.directory = Path(directory) if directory is not None else None
        self.context = context or ImageContext()
        self._memo: dict[tuple[str, str], tuple[Prompts, dict[str, Any]]] = {}
        self._batch: dict[tuple[str, str], tuple[Prompts, dict[str, Any]]] = {}
        self.passes = 0

    def prefetch(self, images: list[np.ndarray], texts: list[str]) -> None:
        """Compute the prompts of several (image, text) pairs in one ``prompts_many`` call of the wrapped
        prompter (when it has one), skipping those cached on disk; :meth:`prompts` then returns them (and
        writes them to disk) exactly as if computed one by one.

        Args:
            images: H x W x 3 uint8 images.
            texts: one text prompt per image.
        """
        many = getattr(self.prompter, "prompts_many", None)
        self._batch.clear()
        if many is None:
            return
        todo: dict[tuple[str, str], np.ndarray] = {}
        for image, text in zip(images, texts):
            key = image_key(image)
            path = self._path(key, text)
            if (key, text) not in self._memo and not (path is not None and path.is_file()):
                todo.setdefault((key, text), image)
        if not todo:
            return
        got = many(list(todo.values()), [t for _, t in todo])
        for (key, text), out in zip(todo, got):
            self._store(key, text, out)
            self._batch[(key, text)] = out

    def _path(self, key: str, text: str) -> Path | None:
        from .config import spec_hash

        return self.directory / f"{key}_{spec_hash(text, 10)}.json" if self.directory is not None else None

    def _store(self, key: str, text: str, out: tuple[Prompts, dict[str, Any]]) -> None:
        self.passes += 1
        path = self._path(key, text)
        if path is not None:
            p = out[0]
            entry = {
                "boxes": _arr(p.boxes),
                "points": _arr(p.points),
                "point_labels": _arr(p.point_labels),
                "text": p.text,
            }
            atomic_write_json(path, entry, indent=None, fsync=False)

    def prompts(self, image: np.ndarray, text: str) -> tuple[Prompts, dict[str, Any]]:
        """The wrapped prompter's ``(prompts, extras)`` for ``(image, text)``, computed once.

        Args:
            image: the H x W x 3 uint8 image.
            text: the text prompt.
        """
        key = self.context.key_for(image)
        if (key, text) in self._memo:
            return self._memo[(key, text)]
        if self._memo and next(iter(self._memo))[0] != key:
            self._memo.clear()  # a new image
        if (key, text) in self._batch:  # computed by prefetch, with the other images of its chunk
            self._memo[(key, text)] = out = self._batch.pop((key, text))
            return out
        path = self._path(key, text)
        out = None
        if path is not None and path.is_file():
            try:
                d = json.loads(path.read_text())
                out = (
                    Prompts(
                        boxes=d["boxes"], points=d["points"], point_labels=d["point_labels"], text=d["text"]
                    ),
                    {},
                )
            except (ValueError, KeyError, OSError):
                out = None
        if out is None:
            out = self.prompter.prompts(image, text)
            self._store(key, text, out)
        self._memo[(key, text)] = out
        return out

    def __getattr__(self, name: str) -> Any:
        if name in ("prompter", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.prompter, name)
