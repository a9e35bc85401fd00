"""``mobilesam``: the ``sam`` segmenter with MobileSAM (TinyViT encoder, SAM decoder): same prompts, ~60x faster encoder."""
from __future__ import annotations

from typing import Any

from ..registry import register
from .sam import SamSegmenter


@register("segmenter", "mobilesam", description="MobileSAM with box / point prompts (TinyViT encoder + SAM decoder)",
          source="MobileSAM weights mobile_sam.pt from github.com/ChaoningZhang/MobileSAM (Apache-2.0)")
class MobileSamSegmenter(SamSegmenter):
    """:class:`~lvlm.segmenters.sam.SamSegmenter` with ``model_type="mobilesam"``; the other settings are the same."""

    def __init__(self, checkpoint: Any = "default", device: str = "auto", multimask: Any = "auto",
                 batch_size: int = 64, decoder_checkpoint: str | None = None, encoder_backend: str = "auto",
                 zoom: Any = None) -> None:
        super().__init__(model_type="mobilesam", checkpoint=checkpoint, device=device, multimask=multimask,
                         batch_size=batch_size, decoder_checkpoint=decoder_checkpoint, encoder_backend=encoder_backend,
                         zoom=zoom)
