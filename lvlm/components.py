"""The four stage interfaces of the data flow, each a tiny base class.

image + prompt -> MaskGenerator -> Candidates -> Selector -> Selection (mask)
image + prompt -> Prompter -> Prompts -> PromptedSegmenter -> Candidates (-> union or Selector)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .device import resolve_device
from .io import load_image
from .types import Candidates, Prompts, Selection

__all__ = ["MaskGenerator", "PromptedSegmenter", "Prompter", "Selector", "image_key", "resolve_device"]


def image_key(image: np.ndarray) -> str:
    """A content hash of an image array (cache key for embeddings and candidate masks).

    Args:
        image: the image array.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def _lru(owner: Any, attr: str) -> OrderedDict:
    return owner.__dict__.setdefault(attr, OrderedDict())


def _remember(cache: OrderedDict, key: str, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


def _cached(owner: Any, attr: str, image: np.ndarray, compute: Any) -> Any:
    """``compute(image)`` through the LRU ``owner.<attr>`` (``owner.cache_size`` entries, keyed by
    content)."""
    cache, key = _lru(owner, attr), image_key(image)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = compute(image)
    _remember(cache, key, value, owner.cache_size)
    return value


class MaskGenerator:
    """Everything mode: an image in, candidate masks out.

    Subclasses implement ``_generate(image)`` (and, when images can share batched work, ``_generate_many``);
    the candidates of the last ``cache_size`` images are kept, keyed by :func:`image_key`, so several text
    prompts on one image run the generator once (as :meth:`PromptedSegmenter.embed` keeps embeddings).
    """

    cache_size = 2

    def generate(self, image: Any) -> Candidates:
        """Candidate masks (N x H x W bool at the input resolution) of one image.

        Args:
            image: an H x W x 3 uint8 RGB array, or anything :func:`lvlm.io.load_image` reads.
        """
        return _cached(self, "_generate_cache", load_image(image), self._generate)

    def generate_batch(self, images: Sequence[Any]) -> list[Candidates]:
        """Candidates of several images; those not cached go through ``_generate_many`` together.

        Args:
            images: images as :meth:`generate` takes them.
        """
        imgs = [load_image(im) for im in images]
        keys = [image_key(im) for im in imgs]
        cache = _lru(self, "_generate_cache")
        todo = list(dict.fromkeys(k for k in keys if k not in cache))
        if todo:
            first = {k: imgs[keys.index(k)] for k in todo}
            size = max(self.cache_size, len(set(keys)))
            for k, cands in zip(todo, self._generate_many([first[k] for k in todo])):
                _remember(cache, k, cands, size)
        out = []
        for k in keys:
            cache.move_to_end(k)
            out.append(cache[k])
        while len(cache) > max(self.cache_size, len(set(keys))):
            cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        """Forget the kept candidates."""
        self.__dict__.pop("_generate_cache", None)

    def _generate(self, image: np.ndarray) -> Candidates:
        raise NotImplementedError

    def _generate_many(self, images: Sequence[np.ndarray]) -> list[Candidates]:
        return [self._generate(im) for im in images]


class PromptedSegmenter:
    """Boxes / points (or text) in, one mask per prompt out.

    Subclasses implement ``_embed(image)`` (the expensive image encoder pass) and
    ``_decode(embedding, prompts, image)``; the embedding of the last ``cache_size`` images is
    kept, so all prompts of an image, and repeated calls, reuse one encoder pass. Optional:
    ``_embed_many(images)`` (one batched encoder pass) and ``_decode_many(embeddings, prompts_list, images)``
    (the prompts of several images in shared decoder calls), which :meth:`segment_many` uses.
    """

    text_conditioned = False  # True for segmenters that take the text itself (CLIPSeg)
    cache_size = 4

    def embed(self, image: np.ndarray) -> Any:
        """The image's embedding (``_embed``), from the cache when the image was seen recently.

        Args:
            image: an H x W x 3 uint8 RGB array.
        """
        return _cached(self, "_embed_cache", image, self._embed)

    def embed_many(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The embeddings of several images through the same LRU as :meth:`embed`; the images not cached go
        through the subclass's ``_embed_many`` together (one batched encoder pass) when it has one, else
        through ``_embed`` one by one. The cache keeps at least the images of this call.

        Args:
            images: H x W x 3 uint8 RGB arrays.
        """
        keys = [image_key(im) for im in images]
        cache = _lru(self, "_embed_cache")
        size = max(self.cache_size, len(set(keys)))
        todo = list(dict.fromkeys(k for k in keys if k not in cache))
        if todo:
            first = {k: images[keys.index(k)] for k in todo}
            many = getattr(self, "_embed_many", None)
            todo_images = [first[k] for k in todo]
            got = many(todo_images) if many is not None else [self._embed(im) for im in todo_images]
            if len(got) != len(todo):
                raise RuntimeError(
                    f"{type(self).__name__}._embed_many returned {len(got)} embeddings for {len(todo)} images"
                )
            for k, emb in zip(todo, got):
                _remember(cache, k, emb, size)
        out = []
        for k in keys:
            cache.move_to_end(k)
            out.append(cache[k])
        while len(cache) > size:
            cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        """Forget the kept embeddings."""
        self.__dict__.pop("_embed_cache", None)

    def segment(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        """One candidate per prompt (box / point set, or the text) on one image.

        Args:
            image: an H x W x 3 uint8 RGB array.
            prompts: the prompts in image pixels (checked against the image, clipped to it).
        """
        prompts = self._checked(image, prompts)
        if self._zoomed(prompts):
            return self._segment_zoomed(image, prompts)  # zoomed prompts: lvlm.segmenters.zoom
        return self._decode(self.embed(image), prompts, image)

    def segment_many(self, images: Sequence[np.ndarray], prompts_list: Sequence[Prompts]) -> list[Candidates]:
        """:meth:`segment` of each image with its prompts; the embeddings come from :meth:`embed_many` (one
        batched encoder pass for the images not cached, when the subclass has ``_embed_many``), then each
        image's prompts are decoded together. Same results as :meth:`segment` image by image.

        Args:
            images: H x W x 3 uint8 RGB arrays.
            prompts_list: one :class:`~lvlm.types.Prompts` per image.
        """
        images, prompts_list = list(images), list(prompts_list)
        if len(images) != len(prompts_list):
            raise ValueError(f"{len(images)} images but {len(prompts_list)} prompt sets")
        if type(self).segment is not PromptedSegmenter.segment:  # a subclass with its own segment
            return [self.segment(im, pr) for im, pr in zip(images, prompts_list)]
        checked = [self._checked(im, pr) for im, pr in zip(images, prompts_list)]
        whole = [i for i, pr in enumerate(checked) if not self._zoomed(pr)]
        embeddings = self.embed_many([images[i] for i in whole])
        many = getattr(self, "_decode_many", None)
        if many is not None:  # the prompts of all whole images share decoder calls
            decoded = many(embeddings, [checked[i] for i in whole], [images[i] for i in whole])
        else:
            decoded = [self._decode(e, checked[i], images[i]) for e, i in zip(embeddings, whole)]
        done = dict(zip(whole, decoded))
        return [
            done[i] if i in done else self._segment_zoomed(im, pr)
            for i, (im, pr) in enumerate(zip(images, checked))
        ]

    def _checked(self, image: np.ndarray, prompts: Prompts) -> Prompts:
        """The prompts validated against the image and clipped to it (text-conditioned segmenters: as
        given)."""
        if self.text_conditioned:
            return prompts
        h, w = image.shape[:2]
        if prompts.boxes is None and prompts.points is None:
            from .errors import PromptError

            raise PromptError(
                f"{type(self).__name__} needs a box or point prompt (--box x0,y0,x1,y1 or --point x,y)"
            )
        prompts.validate(h, w)
        return prompts.clipped(h, w)

    def _zoomed(self, prompts: Prompts) -> bool:
        return getattr(self, "zoom", None) is not None and prompts.has_geometry

    def _segment_zoomed(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        """Each prompt on a zoomed crop of the image (segmenters with a ``zoom`` setting implement it)."""
        raise NotImplementedError(f"{type(self).__name__} has no zoomed prompts")

    def _embed(self, image: np.ndarray) -> Any:
        raise NotImplementedError

    def _decode(self, embedding: Any, prompts: Prompts, image: np.ndarray) -> Candidates:
        raise NotImplementedError


class Prompter:
    """Text to box / point prompts for a segmenter (e.g. saliency -> CRF -> boxes)."""

    def prompts(self, image: np.ndarray, text: str) -> tuple[Prompts, dict[str, Any]]:
        """The prompts, and extras worth keeping (saliency map, CRF map, ...).

        Args:
            image: the H x W x 3 uint8 image.
            text: the text prompt.
        """
        raise NotImplementedError


class Selector:
    """Choose (or merge) the candidate(s) that match the text."""

    def select(self, image: np.ndarray, text: str, candidates: Candidates) -> Selection:
        """The chosen candidate: ``mask``, ``score``, ``index`` and one score per candidate.

        Args:
            image: the H x W x 3 uint8 image.
            text: the text prompt.
            candidates: the candidate masks of the image.
        """
        raise NotImplementedError
