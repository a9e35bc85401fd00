"""``sam``: SAM prompted with boxes and/or points (segment_anything's SamPredictor recipe, batched).

One image-encoder pass per image (cached); all prompts of the image go through the mask decoder
together (``batch_size`` per call). Masks are at the input resolution; scores are SAM's predicted IoU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..components import PromptedSegmenter, resolve_device
from ..errors import ConfigError
from ..io import load_image
from ..models.sam import build_sam, decode_prompts, prompt_tensors
from ..registry import register
from ..types import Candidates, Prompts

MULTIMASK = ("auto", True, False)


@dataclass
class SamEmbedding:
    """An image's SAM embedding with the two sizes needed to map prompts and masks."""

    features: Any  # 1 x C x h x w tensor
    original_size: tuple[int, int]  # H, W of the input image
    input_size: tuple[int, int]  # H, W after ResizeLongestSide (before padding)


def check_multimask(multimask: Any) -> Any:
    if isinstance(multimask, str):
        multimask = multimask.lower()
    if multimask not in MULTIMASK:
        raise ConfigError(f"multimask={multimask!r}; valid values: auto, true, false")
    return multimask


def check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer (prompts per decoder call)")
    return batch_size


def use_multimask(multimask: Any, prompts: Prompts) -> bool:
    """``auto`` follows SAM's advice: 3 masks (keep the best) for an ambiguous single point, one otherwise."""
    if multimask == "auto":
        return prompts.boxes is None and prompts.points is not None and prompts.points.shape[1] == 1
    return bool(multimask)


@register("segmenter", "sam", description="SAM with box / point prompts (segment_anything SamPredictor, batched)",
          source="segment_anything; SAM checkpoints from dl.fbaipublicfiles.com (Apache-2.0)")
class SamSegmenter(PromptedSegmenter):
    """SAM (any ``model_type`` of :func:`lvlm.models.sam.build_sam`) turning boxes / points into masks.

    ``multimask``: ``true`` = the best of SAM's 3 masks by predicted IoU, ``false`` = SAM's single mask,
    ``auto`` (default) = 3 for a single-point prompt, 1 for boxes or several points (SAM's own advice).
    ``batch_size``: prompts per mask-decoder call. ``encoder_backend``: ``auto`` (default: ONNX Runtime on the
    CPU for MobileSAM's TinyViT encoder when ``lvlm[onnx]`` is installed, torch otherwise), ``torch``, or
    ``onnxruntime`` (CPU; also for vit_b / vit_l / medsam: vit_b's encoder 1.5-1.9x faster, after a one-time
    export of about 20 s written to ``$LVLM_HOME/onnx``; not vit_h, over ONNX's 2 GB limit).
    """

    def __init__(self, model_type: str = "vit_h", checkpoint: Any = "default", device: str = "auto",
                 multimask: Any = "auto", batch_size: int = 64, decoder_checkpoint: str | None = None,
                 encoder_backend: str = "auto") -> None:
        from segment_anything import SamPredictor

        self.multimask = check_multimask(multimask)
        self.batch_size = check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.model_type = model_type
        self.model = build_sam(model_type, checkpoint, self.device, decoder_checkpoint, encoder_backend)
        self.predictor = SamPredictor(self.model)
        self.source = f"sam:{model_type}" if model_type != "mobilesam" else "mobilesam"

    def _embed(self, image: np.ndarray) -> SamEmbedding:
        self.predictor.set_image(load_image(image))
        emb = SamEmbedding(self.predictor.features, tuple(self.predictor.original_size),
                           tuple(self.predictor.input_size))
        self.predictor.reset_image()
        return emb

    def _decode(self, embedding: SamEmbedding, prompts: Prompts, image: np.ndarray) -> Candidates:
        import torch

        boxes, points, labels = prompt_tensors(prompts, self.device)
        tf = self.predictor.transform
        if boxes is not None:
            boxes = tf.apply_boxes_torch(boxes, embedding.original_size)
        if points is not None:
            points = tf.apply_coords_torch(points, embedding.original_size)

        def postprocess(low: torch.Tensor) -> torch.Tensor:
            up = self.model.postprocess_masks(low, embedding.input_size, embedding.original_size)
            return up > self.model.mask_threshold

        masks, iou = decode_prompts(self.model.prompt_encoder, self.model.mask_decoder, embedding.features,
                                    boxes, points, labels, multimask=use_multimask(self.multimask, prompts),
                                    batch_size=self.batch_size, postprocess=postprocess)
        return Candidates(masks[:, 0].cpu().numpy(), scores=iou.float().cpu().numpy(), source=self.source)
