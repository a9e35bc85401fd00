"""CLIPSeg segmenter: image + text -> mask in one model (Hugging Face ``transformers``).

CLIPSeg (Lüddecke & Ecker, CVPR 2022) puts a small transformer decoder on a frozen CLIP ViT-B/16:
the decoder reads activations of three CLIP vision layers, is conditioned on the CLIP text embedding
of the prompt (FiLM) and predicts a logit map; ``sigmoid(logits) > threshold`` is the mask, after the
logits are upsampled (bilinear) to the source resolution.

Used three ways (see ``docs/clipseg.md``):

- a pipeline on its own: ``segmenter: {name: clipseg}`` (packaged config ``clipseg/clipseg``);
- with box / point prompts (from the user or a prompter): the CLIPSeg mask restricted to each box,
  or to the connected parts of it that hold a prompt's points;
- as a refiner of a pipeline's mask: the ``clipseg_refine`` combiner (``combine: {name: clipseg_refine,
  mode: intersect|union|weighted|overlap}``), or :meth:`ClipSegSegmenter.refine_mask` on any mask.

As a prompter (its map's regions -> boxes for any segmenter): ``lvlm/selectors/clipseg_prompter.py``.

Loading, preprocessing and the decoder live in :mod:`lvlm.models.clipseg` (:class:`ClipSegModel`);
weights: a Hugging Face id (default ``CIDAS/clipseg-rd64-refined``, ``revision`` pins it), a local
directory written by ``save_pretrained``, or ``tiny-random`` (a tiny randomly initialised model for tests
and smoke runs), plus an optional ``decoder_checkpoint`` written by ``lvlm train clipseg``; all through
:mod:`lvlm.weights`, so a bad file is one :class:`~lvlm.errors.WeightsError` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..components import PromptedSegmenter, resolve_device
from ..errors import ConfigError, LvlmError, PromptError
from ..models.clipseg import (  # noqa: F401 - the loading names, importable from here as before
    DECODER_FORMAT,
    DEFAULT_MODEL,
    TINY_MODEL,
    ClipSegModel,
    decoder_metadata,
    decoder_state,
    hub_url,
    load_clipseg,
    load_clipseg_model,
    load_decoder,
    save_decoder,
    save_tiny_clipseg,
    tiny_clipseg,
)
from ..registry import register
from ..types import Candidates, Prompts

REFINE_MODES = ("intersect", "union", "weighted", "overlap")


# --- the segmenter ---------------------------------------------------------------------------


@register("segmenter", "clipseg", description="CLIPSeg: image + text -> mask", source=hub_url(DEFAULT_MODEL))
class ClipSegSegmenter(PromptedSegmenter):
    """Text-conditioned segmenter: the CLIPSeg probability map thresholded at the source resolution.

    - ``model``: Hugging Face id, local ``save_pretrained`` directory, or ``tiny-random``
    - ``decoder_checkpoint``: decoder-only weights from ``lvlm train clipseg`` (``best_decoder.safetensors``)
    - ``threshold``: on ``sigmoid(logits)``
    - ``image_size``: model input side (default: the checkpoint's training size, else the processor's, 352)
    - ``revision``: Hugging Face revision (branch, tag or commit hash) of a hub ``model``
    - ``refine_mode``: how :meth:`refine_mask` combines a mask with CLIPSeg's: ``intersect`` (both agree),
      ``union``, ``weighted`` (``refine_weight * p + (1 - w) * base > threshold``), ``overlap`` (keep the
      connected parts of the base mask of which at least ``min_overlap`` lies inside the CLIPSeg mask: the
      base's boundaries, CLIPSeg's decision); in a pipeline, the ``clipseg_refine`` combiner calls it

    Args:
        model: a Hugging Face id, a ``save_pretrained`` folder, or ``tiny-random``.
        decoder_checkpoint: decoder weights from ``lvlm train clipseg``, or None.
        threshold: the threshold on ``sigmoid(logits)``, in (0, 1).
        image_size: the model input side (None: the checkpoint's training size, else the processor's).
        device: ``auto``, ``cpu``, ``cuda``...
        refine_mode: ``intersect``, ``union``, ``weighted`` or ``overlap`` (see above).
        refine_weight: ``weighted``: the weight of the CLIPSeg probability.
        min_overlap: ``overlap``: the fraction of a base component that must lie in the CLIPSeg mask.
        revision: the Hugging Face revision of a hub ``model``, or None.
    """

    text_conditioned = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        decoder_checkpoint: str | None = None,
        threshold: float = 0.5,
        image_size: int | None = None,
        device: str = "auto",
        refine_mode: str = "intersect",
        refine_weight: float = 0.5,
        min_overlap: float = 0.5,
        revision: str | None = None,
    ) -> None:
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"clipseg threshold={threshold!r}: must lie strictly between 0 and 1")
        if refine_mode not in REFINE_MODES:
            raise ConfigError(f"clipseg refine_mode={refine_mode!r}; valid values: {', '.join(REFINE_MODES)}")
        if not 0.0 <= float(refine_weight) <= 1.0:
            raise ConfigError(f"clipseg refine_weight={refine_weight!r}: must lie in [0, 1]")
        if image_size is not None and int(image_size) < 8:
            raise ConfigError(f"clipseg image_size={image_size!r}: too small")
        self.model_name = str(model)
        self.threshold = float(threshold)
        self.device = resolve_device(device)
        self.refine_mode = refine_mode
        self.refine_weight = float(refine_weight)
        self.min_overlap = float(min_overlap)
        self.clipseg, self.metadata = load_clipseg_model(
            model, decoder_checkpoint, device=self.device, image_size=image_size, revision=revision
        )
        self.model, self.processor = self.clipseg.net, self.clipseg.processor
        self.image_size = self.clipseg.image_size
        self.extract_layers = self.clipseg.extract_layers

    # -- tensors (the adapter's) ------------------------------------------------------------
    def pixels(self, images: Sequence[np.ndarray]):
        """B x 3 x S x S normalised model input of HxWx3 uint8 images (the model's own image processor).

        Args:
            images: H x W x 3 uint8 images.
        """
        return self.clipseg.pixels(images)

    def text_embeddings(self, texts: Sequence[str]):
        """K x projection_dim CLIP text embeddings (the decoder's condition), cached per text.

        Args:
            texts: the text conditions.
        """
        return self.clipseg.text_embeddings(texts)

    def _embed(self, image: np.ndarray):
        """The frozen CLIP vision pass: activations of the decoder's input layers (one image)."""
        return self.clipseg.activations(image)

    def logits(self, image: np.ndarray, texts: Sequence[str]):
        """K x s x s decoder logits of one image for K texts (one vision pass, cached per image).

        Args:
            image: an H x W x 3 uint8 image.
            texts: the text conditions.
        """
        return self.clipseg.decode(self.embed(image), self.text_embeddings(texts))

    def probabilities(self, image: Any, texts: str | Sequence[str]) -> np.ndarray:
        """K x H x W float32 CLIPSeg probabilities at the source resolution (H x W for one text).

        Args:
            image: the image (anything :func:`~lvlm.io.load_image` reads).
            texts: one text or several.
        """
        from ..io import load_image

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise PromptError("clipseg needs a non-empty text prompt, e.g. 'segment crack'")
        img = load_image(image)
        prob = self.clipseg.upsample(self.logits(img, texts), img.shape[:2])
        return prob[0] if single else prob

    # -- segmentation -----------------------------------------------------------------------
    def segment(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        """One mask per box / point prompt (the CLIPSeg mask restricted to it), or one mask for text only.

        Args:
            image: an H x W x 3 uint8 image.
            prompts: the text prompt, with optional boxes / points.
        """
        if not prompts.text:
            raise PromptError("clipseg is text-conditioned: give a text prompt (e.g. 'segment crack')")
        h, w = image.shape[:2]
        if prompts.boxes is not None or prompts.points is not None:
            prompts.validate(h, w)
            prompts = prompts.clipped(h, w)
        prob = self.probabilities(image, prompts.text)
        mask = prob > self.threshold
        extra: dict[str, Any] = {"probability": prob}
        masks = restrict_to_prompts(mask, prompts)
        scores = np.array([float(prob[m].mean()) if m.any() else 0.0 for m in masks], np.float32)
        return Candidates(masks, scores=scores, source="clipseg", extra=extra)

    def refine_mask(self, image: Any, text: str, base: np.ndarray, mode: str | None = None) -> np.ndarray:
        """Refine another method's H x W mask (bool, or a [0, 1] probability map) with CLIPSeg for ``text``.

        Args:
            image: the image.
            text: the text prompt.
            base: the H x W mask to refine (bool, or a [0, 1] probability map).
            mode: the refine mode (None: the segmenter's ``refine_mode``).
        """
        from ..io import load_image

        img = load_image(image)
        base = np.asarray(base)
        if base.shape != img.shape[:2]:
            raise LvlmError(f"mask shape {base.shape} != image shape {img.shape[:2]}")
        prob = self.probabilities(img, text)
        return self._combine(prob > self.threshold, prob, base, mode)

    def _combine(
        self, mask: np.ndarray, prob: np.ndarray, base: np.ndarray, mode: str | None = None
    ) -> np.ndarray:
        mode = mode or self.refine_mode
        if mode not in REFINE_MODES:
            raise ConfigError(f"refine mode {mode!r}; valid values: {', '.join(REFINE_MODES)}")
        soft = base.astype(np.float32)
        hard = base if base.dtype == bool else soft > 0.5
        if mode == "intersect":
            return mask & hard
        if mode == "union":
            return mask | hard
        if mode == "weighted":
            return (self.refine_weight * prob + (1.0 - self.refine_weight) * soft) > self.threshold
        from scipy import ndimage

        labels, n = ndimage.label(hard)
        if n == 0:
            return np.zeros_like(hard)
        inside = np.bincount(labels.ravel(), weights=mask.ravel(), minlength=n + 1)
        size = np.bincount(labels.ravel(), minlength=n + 1)
        keep = inside / np.maximum(size, 1) >= self.min_overlap
        keep[0] = False
        return keep[labels]

    def __repr__(self) -> str:
        return (
            f"ClipSegSegmenter(model={self.model_name!r}, threshold={self.threshold}, device={self.device!r})"
        )


def restrict_to_prompts(mask: np.ndarray, prompts: Prompts) -> np.ndarray:
    """K x H x W: ``mask`` inside each box, and/or its connected parts holding each prompt's foreground
    points.

    Args:
        mask: the H x W CLIPSeg mask.
        prompts: the box / point prompts.
    """
    k = len(prompts) if (prompts.boxes is not None or prompts.points is not None) else 1
    if prompts.boxes is None and prompts.points is None:
        return mask[None]
    h, w = mask.shape
    out = np.repeat(mask[None], k, axis=0)
    if prompts.boxes is not None:
        ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
        for i, (x0, y0, x1, y1) in enumerate(prompts.boxes):
            out[i] &= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if prompts.points is not None:
        from scipy import ndimage

        for i in range(k):
            labels, _ = ndimage.label(out[i])
            pts = prompts.points[i][prompts.point_labels[i] > 0]
            ids = {int(labels[int(y), int(x)]) for x, y in pts} - {0}
            out[i] = np.isin(labels, list(ids)) if ids else False
    return out
