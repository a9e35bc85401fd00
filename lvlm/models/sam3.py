"""SAM 3 (Carion et al., "SAM 3: Segment Anything with Concepts", 2025) through ``transformers``.

``Sam3Model`` takes an image and a short noun phrase (optionally box exemplars, positive or negative) and
returns every instance of the concept: per query a mask logit map, an xyxy box in [0, 1] and a score
(the query logit times the image-level presence score). The checkpoint ``facebook/sam3`` is gated on the
Hugging Face hub under the SAM License: request access on its page, then log in (``HF_TOKEN``).

This module loads it (:func:`load_sam3`, through :func:`lvlm.weights.hf_pretrained`), builds a tiny random
model of the same classes for tests (:func:`tiny_sam3`), and runs it with the image and text embeddings
cached (:class:`Sam3Runner`); post-processing is transformers' ``post_process_instance_segmentation``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import WeightsError, WeightsNotFoundError

DEFAULT_MODEL = "facebook/sam3"
TINY_MODEL = "tiny-random"
LICENSE = "SAM License (gated: request access at https://huggingface.co/facebook/sam3)"
DEFAULT_THRESHOLD = 0.3  # transformers' post_process_instance_segmentation defaults
DEFAULT_MASK_THRESHOLD = 0.5


def load_sam3(
    model: str | os.PathLike = DEFAULT_MODEL, revision: str | None = None, seed: int = 0
) -> tuple[Any, Any]:
    """``(Sam3Model, Sam3Processor)`` from a hub id, a ``save_pretrained`` folder or ``tiny-random``.

    Args:
        model: ``facebook/sam3`` (gated), another hub id, a local folder, or ``tiny-random``.
        revision: hub revision to pin.
        seed: seed of the tiny random model.

    Raises:
        WeightsError: within seconds when the weights are not in the cache and cannot be fetched (offline, or
            no access to the gated repository), naming the repository and where to request access.
    """
    from ..optional import require

    require("transformers", "the sam3 segmenter")
    name = str(model)
    if name == TINY_MODEL:
        return tiny_sam3(seed=seed)
    from transformers import Sam3Model, Sam3Processor

    from ..weights import hf_pretrained

    try:
        net = hf_pretrained(Sam3Model.from_pretrained, name, "SAM 3", revision=revision)
        proc = hf_pretrained(Sam3Processor.from_pretrained, name, "SAM 3 processor", revision=revision)
    except WeightsNotFoundError as exc:
        if name != DEFAULT_MODEL or "is a gated Hugging Face repository" in str(exc):
            raise
        raise WeightsNotFoundError(
            f"{exc} Note: {DEFAULT_MODEL} is a gated repository (SAM License): request access at "
            f"https://huggingface.co/{DEFAULT_MODEL} first, then set HF_TOKEN."
        ) from None
    except WeightsError:
        raise
    return net, proc


def tiny_sam3(seed: int = 0, image_size: int = 112) -> tuple[Any, Any]:
    """A tiny randomly initialised ``Sam3Model`` (real classes, sizes as transformers' model tests) and a
    processor with a CLIP byte-level BPE tokenizer made offline (no merges: text is split into characters).

    Args:
        seed: torch seed of the initialisation.
        image_size: model input side (a multiple of the patch size 14).
    """
    import torch
    from transformers import (
        CLIPTokenizer,
        Sam3Config,
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3ImageProcessor,
        Sam3MaskDecoderConfig,
        Sam3Model,
        Sam3Processor,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32, pad_token=eos)
    patches = image_size // 14
    backbone = Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_channels=3,
        image_size=image_size,
        patch_size=14,
        window_size=patches // 2,
        global_attn_indexes=[0, 1],
    )
    cfg = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=backbone, fpn_hidden_size=32, scale_factors=[2.0, 1.0]
        ),
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 32,
            "hidden_act": "gelu",
            "bos_token_id": vocab[bos],
            "eos_token_id": vocab[eos],
            "pad_token_id": vocab[eos],
        },
        geometry_encoder_config=Sam3GeometryEncoderConfig(
            hidden_size=32,
            num_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            mask_fuser_hidden_size=32,
            mask_fuser_num_layers=1,
        ),
        detr_encoder_config=Sam3DETREncoderConfig(
            hidden_size=32, num_layers=1, num_attention_heads=4, intermediate_size=64
        ),
        detr_decoder_config=Sam3DETRDecoderConfig(
            hidden_size=32, num_layers=1, num_queries=8, num_attention_heads=4, intermediate_size=64
        ),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Sam3Model(cfg).eval()
        with (
            torch.no_grad()
        ):  # random init says "concept absent" (presence ~1e-4): shift it so instances come out
            net.detr_decoder.presence_head.layer3.bias.add_(12.0)
    ip = Sam3ImageProcessor(
        size={"height": image_size, "width": image_size},
        mask_size={"height": image_size // 4, "width": image_size // 4},
    )
    return net, Sam3Processor(image_processor=ip, tokenizer=tok)


class Sam3Runner:
    """SAM 3 inference with the vision embedding (per image) and text embedding (per phrase) computed once.

    Args:
        model: a ``Sam3Model``.
        processor: its ``Sam3Processor``.
        device: where the model runs.
    """

    def __init__(self, model: Any, processor: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self._text_cache: dict[str, tuple[Any, Any]] = {}

    def vision(self, images: Sequence[np.ndarray]) -> Any:
        """The vision encoder's output for a batch of H x W x 3 uint8 images (resized by the processor).

        Args:
            images: H x W x 3 uint8 images.
        """
        import torch

        pix = self.processor.image_processor(
            images=[np.ascontiguousarray(i) for i in images], return_tensors="pt"
        )["pixel_values"].to(self.device)
        with torch.inference_mode():
            return self.model.get_vision_features(pixel_values=pix)

    def text(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """``(B x L x D text embeddings, B x L attention mask)``, cached per phrase.

        Args:
            texts: the text phrases.
        """
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            enc = self.processor(text=missing, return_tensors="pt")
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            with torch.inference_mode():
                emb = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            if len(self._text_cache) > 256:
                self._text_cache.clear()
            for t, e, m in zip(missing, emb, mask):
                self._text_cache[t] = (e, m)
        return (
            torch.stack([self._text_cache[t][0] for t in texts]),
            torch.stack([self._text_cache[t][1] for t in texts]),
        )

    def boxes(self, boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> tuple[Any, Any]:
        """Box exemplars in input pixels (xyxy) -> the model's normalised cxcywh boxes and labels (processor).

        Args:
            boxes: K x 4 xyxy boxes in input pixels.
            labels: K exemplar labels (1 positive, 0 negative).
            size: the image's ``(H, W)``.
        """
        enc = self.processor(
            original_sizes=[list(size)],
            input_boxes=[[list(map(float, b)) for b in boxes]],
            input_boxes_labels=[[int(v) for v in labels]],
            return_tensors="pt",
        )
        return enc["input_boxes"].to(self.device), enc["input_boxes_labels"].to(self.device)

    def forward(
        self, vision: Any, texts: Sequence[str], input_boxes: Any = None, input_boxes_labels: Any = None
    ) -> Any:
        """``Sam3Model.forward`` on cached vision and text embeddings (one text per image of ``vision``).

        Args:
            vision: the output of :meth:`vision`.
            texts: one text per image.
            input_boxes: box exemplars from :meth:`boxes`, or None.
            input_boxes_labels: their labels, or None.
        """
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        emb, mask = self.text(texts)
        with torch.inference_mode():  # the forward reads text_embeds.pooler_output
            return self.model(
                vision_embeds=vision,
                text_embeds=BaseModelOutputWithPooling(pooler_output=emb),
                attention_mask=mask,
                input_boxes=input_boxes,
                input_boxes_labels=input_boxes_labels,
            )

    def postprocess(
        self,
        outputs: Any,
        sizes: Sequence[tuple[int, int]],
        threshold: float = DEFAULT_THRESHOLD,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
    ) -> list[dict[str, np.ndarray]]:
        """transformers' ``post_process_instance_segmentation``: per image ``masks`` (N x H x W bool),
        ``boxes`` (N x 4 xyxy pixels), ``scores`` (N).

        Args:
            outputs: the output of :meth:`forward`.
            sizes: each image's ``(H, W)``.
            threshold: the instance score threshold.
            mask_threshold: the mask probability threshold.
        """
        res = self.processor.post_process_instance_segmentation(
            outputs,
            threshold=threshold,
            mask_threshold=mask_threshold,
            target_sizes=[tuple(s) for s in sizes],
        )
        return [
            {
                "masks": r["masks"].bool().cpu().numpy(),
                "boxes": r["boxes"].float().cpu().numpy(),
                "scores": r["scores"].float().cpu().numpy(),
            }
            for r in res
        ]
