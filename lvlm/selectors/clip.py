"""Text selection by CLIP similarity: the base pipeline's mask selector (Villarreal et al. Fig. 1).

Every candidate mask is turned into an image (a *crop*: the mask on black, the mask's box, ...),
all crops of an image go through the CLIP image tower in one batched, chunked forward on device,
and each crop's cosine similarity to the prompt's text embedding scores its candidate, and the best one is
chosen. Uniting near-best candidates (the two lungs that SAM returns as separate masks, Villarreal et al.
Fig. 7) is the ``merge`` combiner's job (``combine: merge``), on these scores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..components import Selector, resolve_device
from ..errors import ConfigError
from ..registry import register
from ..types import Candidates, Selection, masks_to_boxes

CROPS = ("mask_black", "mask_crop", "bbox_crop", "blur_background", "grey_background")
RULES = ("argmax",)
DEFAULT_TEMPLATE = "a photo of a {}"
MEDICAL_TEMPLATES = (
    "a medical image of the {}.",
    "a photo of the {}.",
    "an x-ray image of the {}.",
    "a chest x-ray showing the {}.",
    "a radiograph of the {}.",
    "a CT scan of the {}.",
    "an MRI scan of the {}.",
    "a microscopy image of {}.",
    "the {} in a medical scan.",
)
TEMPLATE_SETS = ("default", "medical", "imagenet", "none")
_FULL_FRAME = ("mask_black", "blur_background", "grey_background")
_PIXEL_BUDGET = 1 << 25  # composite pixels (x3 channels) built at once: bounds memory for large images


def template_list(templates: str | Sequence[str]) -> list[str]:
    """Resolve a ``templates`` setting to a list of strings with one ``{}`` each.

    Args:
        templates: ``default``, ``medical``, ``imagenet``, ``none``, one template, or a list of them.
    """
    if isinstance(templates, str):
        if templates == "default":
            return [DEFAULT_TEMPLATE]
        if templates == "medical":
            return list(MEDICAL_TEMPLATES)
        if templates == "imagenet":
            from ..optional import require

            oc = require("open_clip", "the imagenet template ensemble")
            return [t("{}") for t in oc.OPENAI_IMAGENET_TEMPLATES]
        if templates in ("none", "raw"):
            return ["{}"]
        templates = [templates]
    out = list(templates)
    if not out:
        raise ConfigError("templates: empty list")
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(
                f"template {t!r} must be a string with exactly one '{{}}' for the prompt; "
                f"or use a template set: {', '.join(TEMPLATE_SETS)}"
            )
    return out


_ARTICLE = re.compile(r"^(a|an|the)\s", re.IGNORECASE)
_TEMPLATE_ARTICLE = re.compile(r"\b(a|an|the) \{\}", re.IGNORECASE)


def fill_template(template: str, prompt: str) -> str:
    """``template`` with the prompt in; a prompt that has its own article replaces the template's
    (``"a photo of a {}"`` + ``"a red triangle"`` -> ``"a photo of a red triangle"``).

    Args:
        template: a string with one ``{}``.
        prompt: the text prompt.
    """
    prompt = prompt.strip()
    if _ARTICLE.match(prompt) and _TEMPLATE_ARTICLE.search(template):
        template = _TEMPLATE_ARTICLE.sub("{}", template, count=1)
    return template.replace("{}", prompt)


@register(
    "selector", "clip", description="pick the candidate mask whose crop best matches the text under CLIP"
)
class ClipSelector(Selector):
    """Score every candidate mask by CLIP image-text cosine similarity and pick the best.

    Args:
        model: a CLIP preset name (``lvlm list clip``), ``{name: ..., **kwargs}`` or a ClipModel.
        crop: how a candidate becomes an image, one or a list (scores averaged): ``mask_black``
            (the paper's: everything outside the mask black, full frame), ``mask_crop`` (that, cropped to
            the mask's box plus ``margin``), ``bbox_crop`` (the image inside the box plus ``margin``),
            ``blur_background`` / ``grey_background`` (full frame, background blurred / set to CLIP's mean
            grey).
        margin: box margin on each side, as a fraction of the box's longer side.
        templates: ``"a photo of a {}"`` (default), ``"medical"``, ``"imagenet"`` (80-template
            ensemble), ``"none"``, or a list of strings with ``{}``; template embeddings are averaged.
        rule: ``argmax`` (the best candidate; to unite near-best ones use ``combine: merge``).
        min_area_frac: candidates smaller than this fraction of the image are not chosen.
        area_weight: adds ``area_weight * log(area fraction)`` to each score.
        stability_weight: adds ``stability_weight * stability`` to each score.
        blur_sigma: the background blur of ``blur_background``, as a fraction of the image's longer side.
        batch_size: crops per CLIP forward pass.
        device: where crops are built and CLIP runs (``auto``, ``cpu``, ``cuda``...).
    """

    def __init__(
        self,
        model: Any = "OA-RN50",
        crop: str | Sequence[str] = "mask_black",
        margin: float = 0.1,
        templates: str | Sequence[str] = DEFAULT_TEMPLATE,
        rule: str = "argmax",
        min_area_frac: float = 0.0,
        area_weight: float = 0.0,
        stability_weight: float = 0.0,
        blur_sigma: float = 0.02,
        batch_size: int = 32,
        device: str = "auto",
    ) -> None:
        crops = [crop] if isinstance(crop, str) else list(crop)
        bad = [c for c in crops if c not in CROPS]
        if bad or not crops:
            raise ConfigError(
                f"crop {bad[0] if bad else crop!r} is not valid; valid crops: {', '.join(CROPS)}"
            )
        if rule == "merge":
            raise ConfigError(
                "selector rule 'merge' is now a combiner: use `combine: {name: merge, margin: 0.01, "
                "max_overlap: 0.2, max_masks: 4}` beside the selector"
            )
        if rule not in RULES:
            raise ConfigError(f"rule={rule!r}; valid rules: {', '.join(RULES)}")
        if margin < 0:
            raise ConfigError(f"margin={margin} must be >= 0 (a fraction of the box's longer side)")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        if not 0.0 <= min_area_frac < 1.0:
            raise ConfigError(f"min_area_frac={min_area_frac} must be in [0, 1)")
        self.crops = crops
        self.margin = float(margin)
        self.templates = template_list(templates)
        self.rule = rule
        self.min_area_frac = float(min_area_frac)
        self.area_weight = float(area_weight)
        self.stability_weight = float(stability_weight)
        self.blur_sigma = float(blur_sigma)
        self.batch_size = int(batch_size)
        from ..models.clip import load_clip

        self.clip = load_clip(model, device=resolve_device(device))
        self.device = self.clip.device
        self._text_features: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"ClipSelector(model={getattr(self.clip, 'name', type(self.clip).__name__)!r}, "
            f"crop={self.crops}, rule={self.rule!r}, templates={len(self.templates)})"
        )

    # --- text -------------------------------------------------------------------------------
    def text_features(self, text: str) -> torch.Tensor:
        """The prompt's normalised text embedding (mean over templates), cached per (prompt, templates).

        Args:
            text: the text prompt.
        """
        key = (text, tuple(self.templates))
        if key not in self._text_features:
            with torch.no_grad():
                feats = self.clip.encode_text(
                    [fill_template(t, text) for t in self.templates], normalize=True
                )
                self._text_features[key] = F.normalize(feats.float().mean(0), dim=-1)
        return self._text_features[key]

    # --- images -----------------------------------------------------------------------------
    def crop_boxes(self, masks: np.ndarray) -> np.ndarray:
        """Square xyxy crop regions of N masks: the mask's box plus ``margin``, its shorter side grown to a
        square.

        Args:
            masks: N x H x W bool masks.
        """
        boxes = masks_to_boxes(masks).astype(np.float64)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        side = np.maximum(np.maximum(w, h) * (1 + 2 * self.margin), 1.0)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1).astype(np.float32)

    def crop_images(self, image: np.ndarray, masks: np.ndarray, crop: str) -> torch.Tensor:
        """N x 3 x S x S model inputs of one crop strategy (built on device, batched; for a chunk of masks).

        Args:
            image: the H x W x 3 uint8 image.
            masks: N x H x W bool masks (a chunk of the candidates).
            crop: one crop strategy of ``CROPS``.
        """
        img = (
            torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None]
        )  # 1x3xHxW uint8
        m = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device)[:, None]  # Nx1xHxW bool
        return self._crop_images(img, m, masks, crop, self._background(img, crop))

    def _background(self, img: torch.Tensor, crop: str) -> torch.Tensor | None:
        if crop == "blur_background":
            return (
                _gaussian_blur(img.float(), self.blur_sigma * max(img.shape[-2:]))
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        if crop == "grey_background":
            mean = torch.tensor(getattr(self.clip, "mean", (0.5, 0.5, 0.5)), device=img.device)
            return (mean * 255).round().to(torch.uint8).view(1, 3, 1, 1)
        return None

    def _crop_images(
        self,
        img: torch.Tensor,
        m: torch.Tensor,
        masks_np: np.ndarray,
        crop: str,
        background: torch.Tensor | None,
    ) -> torch.Tensor:
        if crop == "mask_black":
            return _prep_full(self.clip, img * m)
        if crop in ("blur_background", "grey_background"):
            return _prep_full(self.clip, torch.where(m, img, background))
        boxes = self.crop_boxes(masks_np)
        if crop == "mask_crop":
            src = img * m
        else:  # bbox_crop: the image inside the (margin) box, black outside it
            h, w = img.shape[-2:]
            tight = masks_to_boxes(masks_np).astype(np.float64)
            bw, bh = tight[:, 2] - tight[:, 0], tight[:, 3] - tight[:, 1]
            pad = np.maximum(bw, bh) * self.margin
            lim = torch.from_numpy(
                np.stack([tight[:, 0] - pad, tight[:, 1] - pad, tight[:, 2] + pad, tight[:, 3] + pad], 1)
            ).to(self.device, torch.float32)
            ys = torch.arange(h, device=self.device, dtype=torch.float32) + 0.5
            xs = torch.arange(w, device=self.device, dtype=torch.float32) + 0.5
            iny = (ys[None] >= lim[:, 1:2]) & (ys[None] < lim[:, 3:4])  # N x H
            inx = (xs[None] >= lim[:, 0:1]) & (xs[None] < lim[:, 2:3])  # N x W
            src = img * (iny[:, :, None] & inx[:, None, :])[:, None]
        return _prep_square(
            self.clip, _roi_resize(src, torch.from_numpy(boxes).to(self.device), int(self.clip.image_size))
        )

    def scores(
        self, image: np.ndarray, text: str, masks: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Cosine similarity of every candidate to the text, averaged over crops (and per crop).

        Args:
            image: the H x W x 3 uint8 image.
            text: the text prompt.
            masks: N x H x W bool candidate masks.
        """
        n = len(masks)
        tf = self.text_features(text).to(self.device)
        h, w = masks.shape[1:]
        chunk = max(1, min(self.batch_size, _PIXEL_BUDGET // max(1, h * w)))
        per_crop: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            img = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None]
            for crop in self.crops:
                background = self._background(img, crop)
                sims = []
                for s in range(0, n, chunk):
                    part = masks[s : s + chunk]
                    m = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)[:, None]
                    pixels = self._crop_images(img, m, part, crop, background)
                    sims.append(self.clip.encode_image(pixels, normalize=True).float() @ tf)
                per_crop[crop] = torch.cat(sims)
        stacked = torch.stack([per_crop[c] for c in self.crops]).cpu().numpy()
        return stacked.mean(0), {c: stacked[i] for i, c in enumerate(self.crops)}

    # --- selection --------------------------------------------------------------------------
    def select(self, image: np.ndarray, text: str, candidates: Candidates) -> Selection:
        """The candidate with the best score (similarity plus priors); none when every candidate is excluded.

        Args:
            image: the H x W x 3 uint8 image.
            text: the text prompt.
            candidates: the candidate masks of the image.
        """
        h, w = image.shape[:2]
        n = len(candidates)
        if n == 0:
            return Selection(np.zeros((h, w), bool), float("nan"), None, np.zeros(0, np.float32))
        masks = candidates.masks
        if masks.shape[1:] != (h, w):
            raise ConfigError(f"candidate masks are {masks.shape[1:]} but the image is {(h, w)}")
        sim, per_crop = self.scores(image, text, masks)
        area = masks.reshape(n, -1).sum(1) / float(h * w)
        combined = sim.astype(np.float64)
        if self.area_weight:
            combined = combined + self.area_weight * np.log(np.maximum(area, 1e-6))
        if self.stability_weight and candidates.stability is not None:
            combined = combined + self.stability_weight * candidates.stability
        valid = area > 0
        if self.min_area_frac > 0 and (valid & (area >= self.min_area_frac)).any():
            valid &= area >= self.min_area_frac
        scores = np.where(valid, combined, -np.inf).astype(np.float32)
        extra = {"similarity": sim.astype(np.float32), "crop_scores": per_crop, "rule": self.rule}
        if not valid.any():
            return Selection(np.zeros((h, w), bool), float("nan"), None, scores, extra)
        best = int(np.argmax(scores))
        return Selection(masks[best].copy(), float(scores[best]), best, scores, extra)


# ------------------------------------------------------------------------------------------------
# tensor helpers
# ------------------------------------------------------------------------------------------------
def _prep_full(clip, x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W uint8 on device -> model input, with the model's own (resize + crop) transform."""
    fn = getattr(clip, "preprocess_chw", None)
    if fn is not None:
        return fn(x)
    return clip.preprocess(x.permute(0, 2, 3, 1))


def _prep_square(clip, x: torch.Tensor) -> torch.Tensor:
    """B x 3 x S x S float pixels (0-255) already at the model's size -> model input."""
    fn = getattr(clip, "normalize", None)
    if fn is not None:
        return fn(x)
    return clip.preprocess(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))


def _roi_resize(src: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box i of image i (B x 3 x H x W) and resize it to size x size: bilinear samples averaged
    over each output cell (torchvision's roi_align), batched; outside the image is black."""
    from torchvision.ops import roi_align

    idx = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None]
    return roi_align(
        src.float(),
        torch.cat([idx, boxes.float()], 1),
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=True,
    )


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a B x C x H x W float tensor (reflect padding)."""
    if sigma <= 0:
        return x
    radius = max(1, round(3 * sigma))
    radius = min(radius, max(1, min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
