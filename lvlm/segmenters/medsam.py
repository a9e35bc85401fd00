"""``medsam``: MedSAM (SAM ViT-B fine-tuned on medical images) with box prompts, MedSAM's own recipe
(:mod:`lvlm.models.medsam`: square resize, min-max, per-axis prompt scaling, probabilities upsampled).
"""

from __future__ import annotations

from typing import Any

from ..device import resolve_device
from ..models.medsam import MedSamAdapter
from ..models.sam import build_sam
from ..registry import register
from .sam import SamFamilySegmenter, check_batch_size, check_threshold


@register(
    "segmenter",
    "medsam",
    description="MedSAM with box prompts (SAM ViT-B + MedSAM's preprocessing)",
    source="medsam_vit_b.pth from https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN "
    "(bowang-lab/MedSAM, Apache-2.0)",
)
class MedSamSegmenter(SamFamilySegmenter):
    """MedSAM: box prompts (points are accepted by the decoder but MedSAM was trained with boxes).

    Args:
        checkpoint: ``default`` (official MedSAM weights), a path, or null / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        model_type: the SAM architecture (default ``medsam`` = ViT-B; ``vit_tiny`` for quick tests, its input
            size replaces 1024).
        batch_size: prompts per decoder call.
        threshold: on the probability.
        decoder_checkpoint: a mask decoder specialised with ``lvlm train sam-decoder``.
        encoder_backend: ``auto`` (torch for MedSAM's ViT-B), ``torch``, or ``onnxruntime`` (CPU, after a
            one-time export written to ``$LVLM_HOME/onnx``).
        zoom: zoomed box prompts (:mod:`lvlm.segmenters.zoom`, e.g. ``{context: 4.0}``); null (default): off.
    """

    def __init__(
        self,
        checkpoint: Any = "default",
        device: str = "auto",
        model_type: str = "medsam",
        batch_size: int = 64,
        threshold: float = 0.5,
        decoder_checkpoint: str | None = None,
        encoder_backend: str = "auto",
        zoom: Any = None,
    ) -> None:
        threshold, batch_size = check_threshold(threshold), check_batch_size(batch_size)
        device = resolve_device(device)
        model = build_sam(model_type, checkpoint, device, decoder_checkpoint, encoder_backend)
        super().__init__(
            MedSamAdapter(model, device),
            multimask=False,
            batch_size=batch_size,
            threshold=threshold,
            zoom=zoom,
            source="medsam" if model_type == "medsam" else f"medsam:{model_type}",
        )
        self.size = self.adapter.img_size
