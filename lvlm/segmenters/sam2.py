"""Segmenter ``sam2``: SAM 2.1 prompted with boxes and/or point sets, one mask per prompt.

The image is encoded once (``SAM2ImagePredictor.set_image``; the features are cached per image by
:class:`~lvlm.components.PromptedSegmenter`), then all K prompts of the image are decoded in one
batched call of the predictor's prompt encoder + mask decoder. With ``multimask_output`` (default)
SAM 2 proposes three masks per prompt and the one with the best predicted IoU is kept; otherwise the
single-mask output is used (SAM 2 still falls back to the best multimask output when it is unstable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import PromptedSegmenter
from ..device import resolve_device
from ..registry import register
from ..types import Candidates, Prompts
from .zoom import segment_zoomed, zoom_settings


@register(
    "segmenter",
    "sam2",
    description="SAM 2.1 prompted with boxes / points (one mask per prompt)",
    source="facebookresearch/sam2 SAM 2.1 Hiera t/s/b+/l checkpoints (Apache-2.0)",
)
class Sam2Segmenter(PromptedSegmenter):
    """SAM 2.1 image predictor: boxes / point sets -> masks at the input resolution, batched per image
    (the recipe is :class:`lvlm.models.sam2.Sam2Adapter`).

    Args:
        variant: tiny / small / base_plus / large (tiny_random: small random model for tests).
        checkpoint: ``default`` (official weights), a path, or null / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        multimask_output: keep the best of SAM 2's 3 masks by predicted IoU (else its single mask).
        mask_threshold: the logit threshold of a mask.
        stability_score_offset: the offset of the reported stability score.
        model: an already built SAM2Base to share (then variant / checkpoint are ignored).
        zoom: zoomed prompts (:mod:`lvlm.segmenters.zoom`), e.g. ``{context: 4.0}``; null (default): off.
    """

    def __init__(
        self,
        variant: str = "large",
        checkpoint: Any = "default",
        device: str = "auto",
        multimask_output: bool = True,
        mask_threshold: float = 0.0,
        stability_score_offset: float = 1.0,
        model: Any = None,
        zoom: Any = None,
    ) -> None:
        from ..models.sam2 import Sam2Adapter, _require_sam2, build_sam2_model

        _require_sam2()
        self.device = resolve_device(device)
        self.model = model if model is not None else build_sam2_model(variant, checkpoint, self.device)
        self.variant = variant
        self.source = f"sam2:{variant}" if model is None else "sam2"
        self.multimask_output = bool(multimask_output)
        self.mask_threshold = float(mask_threshold)
        self.stability_score_offset = float(stability_score_offset)
        self.adapter = Sam2Adapter(self.model, mask_threshold=self.mask_threshold)
        self.predictor = self.adapter.predictor
        self.zoom = zoom_settings(zoom)

    def _segment_zoomed(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        return segment_zoomed(self, image, prompts, self.zoom)

    def _embed(self, image: np.ndarray) -> dict[str, Any]:
        """The image encoder pass: SAM 2's multi-scale features of one image."""
        return self.adapter.embed(image)

    def _embed_many(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """The image encoder pass of several images at once (``SAM2ImagePredictor.set_image_batch``)."""
        return self.adapter.embed_many(images)

    def _decode(self, embedding: dict[str, Any], prompts: Prompts, image: np.ndarray) -> Candidates:
        from sam2.utils.amg import calculate_stability_score

        if len(prompts) == 0:
            return Candidates.empty(*embedding["orig_hw"], source=self.source)
        logits, ious, best = self.adapter.predict(embedding, prompts, multimask=self.multimask_output)
        stability = calculate_stability_score(logits, self.mask_threshold, self.stability_score_offset)
        masks = (logits > self.mask_threshold).cpu().numpy()
        return Candidates(
            masks,
            scores=ious.float().cpu().numpy(),
            stability=stability.float().cpu().numpy(),
            source=self.source,
            extra={"prompts": prompts, "multimask_index": best.cpu().numpy()},
        )
