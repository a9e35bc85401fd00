"""``sam3``: SAM 3's promptable concept segmentation, text (and optional box exemplars) -> every instance.

Runs alone (``segmenter: {name: sam3}``: the union, or ``combine: instances`` for one mask per instance)
or with a selector after it (``selector: {name: clip}`` picks among the instances). Boxes from the user
or from a prompter are box exemplars (positive by default, ``exemplar_label: 0`` for negative ones): SAM 3
then finds the instances that look like them, not only the instances inside them.

Weights: ``facebook/sam3`` is gated under the SAM License (request access on its hub page);
``model: tiny-random`` builds a tiny random model of the same classes (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..components import PromptedSegmenter, resolve_device
from ..errors import ConfigError, PromptError
from ..models.sam3 import (
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MODEL,
    DEFAULT_THRESHOLD,
    LICENSE,
    Sam3Runner,
    load_sam3,
)
from ..registry import register
from ..types import Candidates, Prompts


def _check_unit(name: str, value: Any) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"sam3 {name}={value!r}: must lie in [0, 1]")
    return v


@register(
    "segmenter",
    "sam3",
    description="SAM 3: text (+ box exemplars) -> every matching instance",
    source=f"https://huggingface.co/{DEFAULT_MODEL} via transformers ({LICENSE})",
)
class Sam3Segmenter(PromptedSegmenter):
    """SAM 3 through transformers: every instance of the text's concept as a candidate (mask, box, score).

    Args:
        model: ``facebook/sam3`` (gated), another hub id, a ``save_pretrained`` folder, or ``tiny-random``.
        threshold: instance score threshold (query score times presence score), transformers' default 0.3.
        mask_threshold: on the sigmoid of the mask logits, transformers' default 0.5.
        exemplar_label: label of box prompts given as exemplars: 1 positive, 0 negative.
        max_instances: keep at most this many instances (highest scores); None keeps all.
        revision: hub revision to pin.
        device: ``auto`` (GPU when visible), ``cpu``, ``cuda``...
        seed: seed of the ``tiny-random`` model.
    """

    text_conditioned = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        threshold: float = DEFAULT_THRESHOLD,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        exemplar_label: int = 1,
        max_instances: int | None = None,
        revision: str | None = None,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.threshold = _check_unit("threshold", threshold)
        self.mask_threshold = _check_unit("mask_threshold", mask_threshold)
        if exemplar_label not in (0, 1) or isinstance(exemplar_label, bool):
            raise ConfigError(f"sam3 exemplar_label={exemplar_label!r}: 1 (positive) or 0 (negative)")
        if max_instances is not None and (isinstance(max_instances, bool) or int(max_instances) < 1):
            raise ConfigError(f"sam3 max_instances={max_instances!r}: a positive integer or null")
        self.exemplar_label = int(exemplar_label)
        self.max_instances = None if max_instances is None else int(max_instances)
        self.device = resolve_device(device)
        self.model_name = str(model)
        net, proc = load_sam3(model, revision=revision, seed=seed)
        self.runner = Sam3Runner(net, proc, self.device)

    def _embed(self, image: np.ndarray) -> Any:
        return self.runner.vision([image])

    def _check(self, image: np.ndarray, prompts: Prompts) -> Prompts:
        if not prompts.text or not str(prompts.text).strip():
            raise PromptError(
                "sam3 is text-conditioned: give a text prompt (a short noun phrase, e.g. 'yellow bus')"
            )
        if prompts.points is not None:
            raise PromptError("sam3 takes a text and optional box exemplars, not point prompts")
        h, w = image.shape[:2]
        if prompts.boxes is not None and len(prompts.boxes):
            prompts.validate(h, w)
            prompts = prompts.clipped(h, w)
        return prompts

    def _candidates(self, res: dict[str, np.ndarray], shape: tuple[int, int]) -> Candidates:
        order = np.argsort(-res["scores"], kind="stable")
        if self.max_instances is not None:
            order = order[: self.max_instances]
        if not len(order):
            return Candidates.empty(*shape, source="sam3")
        return Candidates(res["masks"][order], res["boxes"][order], res["scores"][order], source="sam3")

    def segment(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        """Every instance of ``prompts.text`` (box prompts are exemplars), masks at the input resolution.

        Args:
            image: an H x W x 3 uint8 image.
            prompts: the text prompt, with optional box exemplars.
        """
        prompts = self._check(image, prompts)
        h, w = image.shape[:2]
        boxes = labels = None
        if prompts.boxes is not None and len(prompts.boxes):
            boxes, labels = self.runner.boxes(
                prompts.boxes, np.full(len(prompts.boxes), self.exemplar_label), (h, w)
            )
        out = self.runner.forward(self.embed(image), [prompts.text], boxes, labels)
        res = self.runner.postprocess(out, [(h, w)], self.threshold, self.mask_threshold)[0]
        return self._candidates(res, (h, w))

    def segment_many(self, images: Sequence[np.ndarray], prompts_list: Sequence[Prompts]) -> list[Candidates]:
        """:meth:`segment` for a batch: one vision and one detector forward for the images without box
        exemplars.

        Args:
            images: H x W x 3 uint8 images.
            prompts_list: one :class:`~lvlm.types.Prompts` per image.
        """
        import torch

        checked = [self._check(im, p) for im, p in zip(images, prompts_list)]
        out: list[Candidates | None] = [None] * len(images)
        text_only = [i for i, p in enumerate(checked) if p.boxes is None or not len(p.boxes)]
        for i, p in enumerate(checked):
            if i not in text_only:
                out[i] = self.segment(images[i], p)
        if text_only:
            imgs = [images[i] for i in text_only]
            vision = self.runner.vision(imgs)
            res = self.runner.postprocess(
                self.runner.forward(vision, [checked[i].text for i in text_only]),
                [im.shape[:2] for im in imgs],
                self.threshold,
                self.mask_threshold,
            )
            for i, im, r in zip(text_only, imgs, res):
                out[i] = self._candidates(r, im.shape[:2])
            del vision
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Sam3Segmenter(model={self.model_name!r}, threshold={self.threshold}, "
            f"mask_threshold={self.mask_threshold})"
        )
