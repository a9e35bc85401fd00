"""CLIPSeg as a prompter: its probability map for the text -> box / point prompts for any segmenter.

CLIPSeg (Lüddecke & Ecker, CVPR 2022) maps image + text to a coarse probability map; its regions become
box (and point) prompts, so a SAM-family segmenter draws the boundaries::

    prompter:  {name: clipseg, model: CIDAS/clipseg-rd64-refined, threshold: 0.5, box_mode: all}
    segmenter: {name: sam, model_type: vit_b}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import Prompter
from ..errors import ConfigError
from ..registry import build, register
from ..types import Prompts
from .prompts_from_saliency import BOX_MODES, binarize, boxes_from_mask, points_for_regions


@register(
    "prompter",
    "clipseg",
    description="text -> CLIPSeg probability map -> box / point prompts",
    source="https://huggingface.co/CIDAS/clipseg-rd64-refined",
)
class ClipSegPrompter(Prompter):
    """Box / point prompts from the regions of CLIPSeg's probability map for the text.

    Args:
        model: CLIPSeg weights: a Hugging Face id, a ``save_pretrained`` directory or ``tiny-random``.
        decoder_checkpoint: decoder weights from ``lvlm train clipseg``.
        image_size: CLIPSeg's input side (default: the checkpoint's).
        threshold: on the probabilities (a number in (0, 1)), or ``otsu`` / ``kmeans``.
        box_mode: ``all`` regions (one prompt each), the ``largest``, the ``peak`` (highest mean probability),
            one ``merged`` box, or ``none`` (points only).
        min_area: smallest region kept, as a fraction of the image.
        max_boxes: at most this many regions, largest first.
        points: positive points per prompt (probability peaks inside the region).
        negative_points: negative points per prompt (lowest probability in its box).
        device: where CLIPSeg runs.
    """

    def __init__(
        self,
        model: str = "CIDAS/clipseg-rd64-refined",
        decoder_checkpoint: str | None = None,
        image_size: int | None = None,
        threshold: float | str = 0.5,
        box_mode: str = "all",
        min_area: float = 0.001,
        max_boxes: int | None = None,
        points: int = 0,
        negative_points: int = 0,
        device: str = "auto",
    ) -> None:
        if box_mode not in BOX_MODES:
            raise ConfigError(f"clipseg prompter box_mode={box_mode!r}; valid: {', '.join(BOX_MODES)}")
        if box_mode == "none" and points < 1:
            raise ConfigError("clipseg prompter box_mode='none' gives point prompts only: set points >= 1")
        if min(points, negative_points) < 0:
            raise ConfigError("clipseg prompter points and negative_points must be >= 0")
        try:
            binarize(np.zeros((2, 2), np.float32), threshold)
        except ValueError as exc:
            raise ConfigError(f"clipseg prompter: {exc}") from None
        self.clipseg = build(
            "segmenter",
            "clipseg",
            model=model,
            decoder_checkpoint=decoder_checkpoint,
            image_size=image_size,
            device=device,
        )
        self.threshold = threshold
        self.box_mode = box_mode
        self.min_area = float(min_area)
        self.max_boxes = max_boxes
        self.points = int(points)
        self.negative_points = int(negative_points)

    def prompts(self, image: np.ndarray, text: str) -> tuple[Prompts, dict[str, Any]]:
        """The prompts of one image; extras: ``probability`` (CLIPSeg's map), ``mask``, ``threshold``.

        Args:
            image: H x W x 3 uint8 RGB.
            text: the text prompt.
        """
        prob = self.clipseg.probabilities(image, text)
        mask, t = binarize(prob, self.threshold)
        extras: dict[str, Any] = {"probability": prob, "mask": mask, "threshold": t}
        mode = self.box_mode if self.box_mode != "none" else ("all" if self.max_boxes else "largest")
        boxes, regions = boxes_from_mask(mask, mode, self.min_area, self.max_boxes, saliency=prob)
        if not regions:
            return Prompts(text=text), extras
        pts = labels = None
        if self.points or self.negative_points:
            pts, labels = points_for_regions(prob, regions, boxes, self.points, self.negative_points)
        return Prompts(
            boxes=None if self.box_mode == "none" else boxes, points=pts, point_labels=labels, text=text
        ), extras

    def __repr__(self) -> str:
        return (
            f"ClipSegPrompter(model={self.clipseg.model_name!r}, threshold={self.threshold}, "
            f"box_mode={self.box_mode!r})"
        )
