"""``mobilesam``: the ``sam`` segmenter with MobileSAM (TinyViT encoder, SAM decoder): same prompts, a much
smaller encoder."""

from __future__ import annotations

from typing import Any

from ..registry import register
from .sam import SamSegmenter


@register(
    "segmenter",
    "mobilesam",
    description="MobileSAM with box / point prompts (TinyViT encoder + SAM decoder)",
    source="MobileSAM weights mobile_sam.pt from github.com/ChaoningZhang/MobileSAM (Apache-2.0)",
)
class MobileSamSegmenter(SamSegmenter):
    """:class:`~lvlm.segmenters.sam.SamSegmenter` with ``model_type="mobilesam"``; the other settings are the
    same.

    Args:
        checkpoint: ``default`` (the official MobileSAM weights), a path, or None / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        multimask: as :class:`~lvlm.segmenters.sam.SamSegmenter`.
        batch_size: prompts per decoder call.
        decoder_checkpoint: a specialised mask decoder, or None.
        encoder_backend: ``auto``, ``torch`` or ``onnxruntime``.
        zoom: as :class:`~lvlm.segmenters.sam.SamSegmenter`.
    """

    def __init__(
        self,
        checkpoint: Any = "default",
        device: str = "auto",
        multimask: Any = "auto",
        batch_size: int = 64,
        decoder_checkpoint: str | None = None,
        encoder_backend: str = "auto",
        zoom: Any = None,
    ) -> None:
        super().__init__(
            model_type="mobilesam",
            checkpoint=checkpoint,
            device=device,
            multimask=multimask,
            batch_size=batch_size,
            decoder_checkpoint=decoder_checkpoint,
            encoder_backend=encoder_backend,
            zoom=zoom,
        )
