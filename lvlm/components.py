"""The four stage interfaces of the data flow, each a tiny base class.

image + prompt -> MaskGenerator -> Candidates -> Selector -> Selection (mask)
image + prompt -> Prompter -> Prompts -> PromptedSegmenter -> Candidates (-> union or Selector)
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from .device import resolve_device
from .types import Candidates, Prompts, Selection

__all__ = ["MaskGenerator", "PromptedSegmenter", "Prompter", "Selector", "image_key", "resolve_device"]


def image_key(image: np.ndarray) -> str:
    """A content hash of an image array (cache key for embeddings and candidate masks)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


class MaskGenerator:
    """Everything mode: an image in, candidate masks out."""

    def generate(self, image: np.ndarray) -> Candidates:  # image: H x W x 3 uint8 RGB
        raise NotImplementedError


class PromptedSegmenter:
    """Boxes / points (or text) in, one mask per prompt out.

    Subclasses implement ``_embed(image)`` (the expensive image encoder pass) and
    ``_decode(embedding, prompts, image)``; the embedding of the last ``cache_size`` images is
    kept, so all prompts of an image, and repeated calls, reuse one encoder pass.
    """

    text_conditioned = False  # True for segmenters that take the text itself (CLIPSeg)
    cache_size = 4

    def embed(self, image: np.ndarray) -> Any:
        cache = self.__dict__.setdefault("_embed_cache", OrderedDict())
        key = image_key(image)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        emb = self._embed(image)
        cache[key] = emb
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        return emb

    def segment(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        h, w = image.shape[:2]
        if not self.text_conditioned:
            if prompts.boxes is None and prompts.points is None:
                from .errors import PromptError

                raise PromptError(f"{type(self).__name__} needs a box or point prompt (--box x0,y0,x1,y1 or --point x,y)")
            prompts.validate(h, w)
            prompts = prompts.clipped(h, w)
        return self._decode(self.embed(image), prompts, image)

    def _embed(self, image: np.ndarray) -> Any:
        raise NotImplementedError

    def _decode(self, embedding: Any, prompts: Prompts, image: np.ndarray) -> Candidates:
        raise NotImplementedError


class Prompter:
    """Text to box / point prompts for a segmenter (e.g. saliency -> CRF -> boxes)."""

    def prompts(self, image: np.ndarray, text: str) -> tuple[Prompts, dict[str, Any]]:
        """The prompts, and extras worth keeping (saliency map, CRF map, ...)."""
        raise NotImplementedError


class Selector:
    """Choose (or merge) the candidate(s) that match the text."""

    def select(self, image: np.ndarray, text: str, candidates: Candidates) -> Selection:
        raise NotImplementedError
