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

from ..components import PromptedSegmenter, resolve_device
from ..registry import register
from ..types import Candidates, Prompts


@register("segmenter", "sam2", description="SAM 2.1 prompted with boxes / points (one mask per prompt)",
          source="facebookresearch/sam2 SAM 2.1 Hiera t/s/b+/l checkpoints (Apache-2.0)")
class Sam2Segmenter(PromptedSegmenter):
    """SAM 2.1 image predictor: boxes / point sets -> masks at the input resolution, batched per image.

    ``variant``: tiny / small / base_plus / large (tiny_random: small random model for tests);
    ``model``: an already built SAM2Base to share (then variant / checkpoint are ignored).
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
    ) -> None:
        from ..models.sam2 import _require_sam2, build_sam2_model, image_predictor

        _require_sam2()
        self.device = resolve_device(device)
        self.model = model if model is not None else build_sam2_model(variant, checkpoint, self.device)
        self.variant = variant
        self.source = f"sam2:{variant}" if model is None else "sam2"
        self.multimask_output = bool(multimask_output)
        self.mask_threshold = float(mask_threshold)
        self.stability_score_offset = float(stability_score_offset)
        self.predictor = image_predictor(self.model, mask_threshold=self.mask_threshold)

    def _embed(self, image: np.ndarray) -> dict[str, Any]:
        """The image encoder pass: SAM 2's multi-scale features of one image."""
        self.predictor.set_image(np.ascontiguousarray(image))
        emb = {"features": self.predictor._features, "orig_hw": tuple(self.predictor._orig_hw[0])}
        self.predictor.reset_predictor()
        return emb

    def _decode(self, embedding: dict[str, Any], prompts: Prompts, image: np.ndarray) -> Candidates:
        import torch
        from sam2.utils.amg import calculate_stability_score

        if len(prompts) == 0:
            return Candidates.empty(*embedding["orig_hw"], source=self.source)
        pred = self.predictor
        pred._features, pred._orig_hw = embedding["features"], [embedding["orig_hw"]]
        pred._is_image_set, pred._is_batch = True, False
        try:
            with torch.inference_mode():
                _, coords, labels, boxes = pred._prep_prompts(
                    prompts.points, prompts.point_labels, prompts.boxes, None, normalize_coords=True)
                logits, ious, _ = pred._predict(coords, labels, boxes, None,
                                                multimask_output=self.multimask_output, return_logits=True)
                # logits: K x M x H x W at the input resolution, ious: K x M (M = 3 or 1)
                best = ious.argmax(dim=1)
                k = torch.arange(len(best), device=best.device)
                logits, ious = logits[k, best], ious[k, best]
                stability = calculate_stability_score(logits, self.mask_threshold, self.stability_score_offset)
                masks = (logits > self.mask_threshold).cpu().numpy()
        finally:
            pred.reset_predictor()
        return Candidates(
            masks,
            scores=ious.float().cpu().numpy(),
            stability=stability.float().cpu().numpy(),
            source=self.source,
            extra={"prompts": prompts, "multimask_index": best.cpu().numpy()},
        )
