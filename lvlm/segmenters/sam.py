"""``sam``: SAM prompted with boxes and/or points (segment_anything's SamPredictor recipe, batched).

One image-encoder pass per image (cached); all prompts of the image go through the mask decoder
together (``batch_size`` per call). Masks are at the input resolution; scores are SAM's predicted IoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import PromptedSegmenter
from ..device import resolve_device
from ..errors import ConfigError
from ..io import load_image
from ..models.sam import ImageEmbedding, SamAdapter, SamFamilyAdapter, build_sam
from ..registry import register
from ..types import Candidates, Prompts
from .zoom import segment_zoomed, zoom_settings

MULTIMASK = ("auto", True, False)


def check_multimask(multimask: Any) -> Any:
    """``multimask`` when it is ``auto`` (any case), True or False, else ConfigError.

    Args:
        multimask: the setting.
    """
    if isinstance(multimask, str):
        multimask = multimask.lower()
    if multimask not in MULTIMASK:
        raise ConfigError(f"multimask={multimask!r}; valid values: auto, true, false")
    return multimask


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` when it is a positive int, else ConfigError.

    Args:
        batch_size: the setting.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch_size={batch_size!r}: expected a positive integer (prompts per decoder call)"
        )
    return batch_size


def use_multimask(multimask: Any, prompts: Prompts) -> bool:
    """``auto`` follows SAM's advice: 3 masks (keep the best) for an ambiguous single point, one otherwise.

    Args:
        multimask: ``auto``, True or False.
        prompts: the prompts of the call.
    """
    if multimask == "auto":
        return prompts.boxes is None and prompts.points is not None and prompts.points.shape[1] == 1
    return bool(multimask)


class SamFamilySegmenter(PromptedSegmenter):
    """Box / point prompts -> masks on any SAM-architecture model through its adapter
    (:mod:`lvlm.models.sam`): one encoder pass per image (cached), all prompts decoded together.

    The registered ``sam``, ``mobilesam``, ``medsam`` and ``litemedsam`` segmenters are this class with the
    adapter of their family; built directly, it evaluates any model (e.g. a base vs a specialised decoder).

    Args:
        adapter: the model and its family's recipe (:func:`lvlm.models.sam.adapter_for`).
        multimask: ``true`` = the best of the decoder's 3 masks by predicted IoU, ``false`` = the single mask,
            ``auto`` = 3 for a single-point prompt, 1 for boxes or several points (SAM's own advice).
        batch_size: prompts per mask-decoder call.
        threshold: the mask threshold (None: the family's; a probability for MedSAM / LiteMedSAM).
        source: the name in ``Candidates.source``.
        embeddings: where embeddings come from instead of the encoder: anything with ``get(image)``
            returning the 1 x C x h x w features (e.g. the decoder trainer's on-disk cache).
        zoom: zoomed prompts (:mod:`lvlm.segmenters.zoom`): ``{context: 4.0, min_crop: 32, batch: 8, share:
            true}`` decodes each box on a crop of ``context`` x its side at the full input size, mask pasted
            back at the input resolution; null / false (default): the whole image in one encoder pass.
    """

    def __init__(
        self,
        adapter: SamFamilyAdapter,
        multimask: Any = False,
        batch_size: int = 64,
        threshold: float | None = None,
        source: str = "sam",
        embeddings: Any = None,
        zoom: Any = None,
    ) -> None:
        self.adapter = adapter
        self.model = adapter.model
        self.device = str(adapter.device)
        self.multimask = check_multimask(multimask)
        self.batch_size = check_batch_size(batch_size)
        self.threshold = threshold
        self.source = source
        self.embeddings = embeddings
        self.zoom = zoom_settings(zoom)

    def _segment_zoomed(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        return segment_zoomed(self, image, prompts, self.zoom)

    def _embed(self, image: np.ndarray) -> ImageEmbedding:
        img = load_image(image)
        features = self.embeddings.get(img) if self.embeddings is not None else None
        return self.adapter.embed(img, features)

    def _embed_many(self, images: list[np.ndarray]) -> list[ImageEmbedding]:
        """The image encoder pass of several images at once (the adapter's batched ``encode``); with an
        ``embeddings`` source, one lookup per image."""
        if self.embeddings is not None:
            return [self._embed(im) for im in images]
        return self.adapter.embed_many([load_image(im) for im in images])

    def _decode(self, embedding: ImageEmbedding, prompts: Prompts, image: np.ndarray) -> Candidates:
        return self._decode_many([embedding], [prompts], [image])[0]

    def _decode_many(
        self, embeddings: list[ImageEmbedding], prompts_list: list[Prompts], images: list[np.ndarray]
    ) -> list[Candidates]:
        """The prompts of several images through shared mask-decoder calls (the adapter's ``predict_many``);
        images that want a different ``multimask`` choice go in separate groups."""
        out: list[Candidates | None] = [None] * len(embeddings)
        groups: dict[bool, list[int]] = {}
        for i, pr in enumerate(prompts_list):
            groups.setdefault(use_multimask(self.multimask, pr), []).append(i)
        for multimask, rows in groups.items():
            got = self.adapter.predict_many(
                [embeddings[i] for i in rows],
                [prompts_list[i] for i in rows],
                multimask=multimask,
                batch_size=self.batch_size,
                threshold=self.threshold,
            )
            for i, (masks, iou) in zip(rows, got):
                out[i] = Candidates(masks.cpu().numpy(), scores=iou.float().cpu().numpy(), source=self.source)
        return out


def check_threshold(threshold: Any) -> float:
    """A probability threshold in (0, 1), else ConfigError.

    Args:
        threshold: the setting.
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not 0.0 < float(threshold) < 1.0
    ):
        raise ConfigError(f"threshold={threshold!r}: expected a probability in (0, 1)")
    return float(threshold)


@register(
    "segmenter",
    "sam",
    description="SAM with box / point prompts (segment_anything SamPredictor, batched)",
    source="segment_anything; SAM checkpoints from dl.fbaipublicfiles.com (Apache-2.0)",
)
class SamSegmenter(SamFamilySegmenter):
    """SAM (any ``model_type`` of :func:`lvlm.models.sam.build_sam`) turning boxes / points into masks, with
    segment_anything's ``SamPredictor`` recipe (:class:`~lvlm.models.sam.SamAdapter`).

    Args:
        model_type: vit_h / vit_l / vit_b / vit_tiny / mobilesam / medsam (the network; the recipe stays
            SAM's).
        checkpoint: ``default`` (official weights), a path, or null / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        multimask: ``true`` = the best of SAM's 3 masks by predicted IoU, ``false`` = SAM's single mask,
            ``auto`` (default) = 3 for a single-point prompt, 1 for boxes or several points (SAM's own
            advice).
        batch_size: prompts per mask-decoder call.
        decoder_checkpoint: a mask decoder specialised with ``lvlm train sam-decoder``.
        encoder_backend: ``auto`` (default: ONNX Runtime on the CPU for MobileSAM's TinyViT encoder when
            ``lvlm[onnx]`` is installed, torch otherwise), ``torch``, or ``onnxruntime`` (CPU; also for vit_b
            / vit_l / medsam after a one-time export written to ``$LVLM_HOME/onnx``; not vit_h, over ONNX's
            2 GB limit).
        zoom: zoomed prompts (:mod:`lvlm.segmenters.zoom`, e.g. ``{context: 4.0}``); null (default): off.
    """

    def __init__(
        self,
        model_type: str = "vit_h",
        checkpoint: Any = "default",
        device: str = "auto",
        multimask: Any = "auto",
        batch_size: int = 64,
        decoder_checkpoint: str | None = None,
        encoder_backend: str = "auto",
        zoom: Any = None,
    ) -> None:
        multimask, batch_size = check_multimask(multimask), check_batch_size(batch_size)
        device = resolve_device(device)
        self.model_type = model_type
        model = build_sam(model_type, checkpoint, device, decoder_checkpoint, encoder_backend)
        super().__init__(
            SamAdapter(model, device),
            multimask=multimask,
            batch_size=batch_size,
            zoom=zoom,
            source=f"sam:{model_type}" if model_type != "mobilesam" else "mobilesam",
        )
