"""Prompter ``saliency``: text -> CLIP saliency map -> (dense CRF) -> box / point prompts for a segmenter.

The gScoreCAM pipeline of MedCLIP-SAM: a CAM method explains the CLIP similarity of the image and the
text as a heat map, the map is smoothed, optionally refined by a dense CRF, binarised, and the
connected regions become box (and point) prompts::

    prompter:  {name: saliency, clip: OA-RN50, method: gscorecam, topk: 300, crf: {name: torch}}
    segmenter: {name: medsam}
    combine: union          # several boxes -> the union of their masks

``prompts(image, text)`` returns the prompts in the image's pixel frame and the intermediate maps
(``saliency``, ``smoothed``, ``crf``, ``mask``) at the image's resolution.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..components import Prompter, resolve_device
from ..errors import ConfigError, ImageError
from ..models.clip_base import ClipModel
from ..registry import build_spec, get, register
from ..types import Prompts
from .cams import clip_device
from .prompts_from_saliency import BOX_MODES, binarize, boxes_from_mask, points_for_regions, smooth

RESIZE_MODES = ("stretch", "pad")


def _accepts(obj: Callable[..., Any], key: str) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == key or p.kind is p.VAR_KEYWORD for p in params)


def _with_defaults(kind: str, spec: Any, defaults: dict[str, Any]) -> Any:
    """A ``{"name": ...}`` spec with ``defaults`` added where the component takes them and the spec does not
    set them (a built object is returned as is)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    if "name" not in spec:
        raise ConfigError(f"{kind} config {spec!r} has no 'name' key")
    entry = get(kind, spec["name"])
    for k, v in defaults.items():
        if k not in spec and _accepts(entry.obj, k):
            spec[k] = v
    return spec


@register(
    "prompter",
    "saliency",
    description="text -> CLIP saliency (gScoreCAM, HilaCAM, M2IB, Score-CAM, "
    "Grad-CAM) -> dense CRF -> box / point prompts",
    source="MedCLIP-SAM's gScoreCAM pipeline",
)
class SaliencyPrompter(Prompter):
    """Box / point prompts from a CLIP saliency map.

    - ``clip``: CLIP preset name, ``{name: ..., **kwargs}`` or a built :class:`ClipModel`;
    - ``method``: ``gscorecam`` | ``hilacam`` (ViT) | ``m2ib`` (ViT; MedCLIP-SAMv2) | ``scorecam`` |
      ``gradcam``, a ``{name: ...}`` dict or a callable ``(clip, pixels, text_features) -> S x S map``;
      ``topk``, ``batch_size``, ``logit_scale`` go to the method when it takes them;
    - ``templates``: text templates (``{}`` = the prompt) whose embeddings are averaged;
    - ``resize``: ``stretch`` the image to the CLIP input square, or ``pad`` it to a square first;
    - ``crf``: None, or a CRF backend spec (``{name: torch | pydensecrf, **parameters}``);
    - ``sigma``: Gaussian smoothing of the map (fraction of the shorter side; >= 1: pixels; 0: none);
    - ``threshold``: a number in [0, 1], ``otsu``, ``kmeans``, or ``auto`` (0.5 on CRF marginals, else otsu);
    - ``box_mode``: ``largest`` region, the ``peak`` region (highest mean smoothed saliency), ``all``
      regions, one ``merged`` box, or ``none`` (points only);
      ``min_area``: smallest region kept (fraction of the image); ``max_boxes``: at most this many boxes;
    - ``points`` / ``negative_points``: saliency peaks (positive) and low-saliency points (negative) per
      prompt;
    - ``device``: where CLIP and the CRF run (``auto``: GPU when visible).

    Args:
        clip: a CLIP preset name, ``{name: ..., **kwargs}`` or a built :class:`ClipModel`.
        method: the saliency method (see above).
        topk: gScoreCAM's channel count or fraction (passed when the method takes it).
        batch_size: masked images per forward pass (passed when the method takes it).
        logit_scale: the logit scale (passed when the method takes it).
        templates: text templates (``{}`` is the prompt).
        resize: ``stretch`` or ``pad``.
        crf: None, or a CRF backend spec.
        sigma: Gaussian smoothing of the map.
        threshold: a number in [0, 1], ``otsu``, ``kmeans`` or ``auto``.
        box_mode: ``largest``, ``peak``, ``all``, ``merged`` or ``none``.
        min_area: the smallest region kept, as a fraction of the image.
        max_boxes: at most this many boxes, or None.
        points: positive points (saliency peaks) per prompt.
        negative_points: negative (low-saliency) points per prompt.
        device: where CLIP and the CRF run.
    """

    def __init__(
        self,
        clip: str | dict | ClipModel = "OA-RN50",
        method: str | dict | Callable = "gscorecam",
        topk: float | str | None = 300,
        batch_size: int = 128,
        logit_scale: float | None = None,
        templates: Sequence[str] = ("{}",),
        resize: str = "stretch",
        crf: str | dict | None = None,
        sigma: float = 0.02,
        threshold: float | str = "auto",
        box_mode: str = "largest",
        min_area: float = 0.001,
        max_boxes: int | None = None,
        points: int = 0,
        negative_points: int = 0,
        device: str = "auto",
    ) -> None:
        if isinstance(templates, str):
            templates = [templates]
        templates = list(templates)
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(
                f"templates={templates!r}: give a list of strings each containing '{{}}' for the prompt"
            )
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize={resize!r}; valid: {', '.join(RESIZE_MODES)}")
        if box_mode not in BOX_MODES:
            raise ConfigError(f"box_mode={box_mode!r}; valid: {', '.join(BOX_MODES)}")
        if box_mode == "none" and points < 1:
            raise ConfigError("box_mode='none' gives point prompts only: set points >= 1")
        if min(points, negative_points) < 0:
            raise ConfigError("points and negative_points must be >= 0")
        if threshold != "auto":
            try:
                binarize(np.zeros((2, 2), np.float32), threshold)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        from ..models.clip import load_clip

        self.device = resolve_device(device)
        self.clip = load_clip(clip, device=self.device)  # shared with other stages naming the same CLIP
        if callable(method) and not isinstance(method, (str, dict)):
            self.method = method
        else:
            self.method = build_spec(
                "saliency",
                _with_defaults(
                    "saliency", method, {"topk": topk, "batch_size": batch_size, "logit_scale": logit_scale}
                ),
            )
        self.crf = None
        if crf is not None and crf is not False:
            self.crf = build_spec(
                "crf",
                _with_defaults(
                    "crf", "torch" if crf is True else crf, {"device": str(clip_device(self.clip))}
                ),
            )
        self.templates = templates
        self.resize = resize
        self.sigma = float(sigma)
        self.threshold = threshold
        self.box_mode = box_mode
        self.min_area = float(min_area)
        self.max_boxes = max_boxes
        self.points = int(points)
        self.negative_points = int(negative_points)

    # --- pieces -------------------------------------------------------------------------------
    def text_features(self, text: str) -> torch.Tensor:
        """``1 x D``: the normalised mean of the templates' normalised text embeddings.

        Args:
            text: the text prompt.
        """
        with torch.no_grad():
            emb = self.clip.encode_text([t.format(text) for t in self.templates], normalize=True).float()
            emb = emb.mean(dim=0, keepdim=True)
            return emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def _pixels(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """``1 x 3 x S x S`` model input on the model's device (the whole image resized to the square, or
        padded to a square first), and the image's place in it (top, left, height, width in input pixels)."""
        dev = clip_device(self.clip)
        s = int(self.clip.image_size)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(dev).permute(2, 0, 1)[None].float()  # 0-255
        h, w = image.shape[:2]
        if self.resize == "pad":
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            mean = torch.tensor(self.clip.mean, device=dev).view(1, 3, 1, 1) * 255.0
            canvas = mean.expand(1, 3, side, side).clone()  # pad with the mean colour (0 once normalised)
            canvas[:, :, top : top + h, left : left + w] = x
            x = canvas
            place = (
                round(top * s / side),
                round(left * s / side),
                max(1, round(h * s / side)),
                max(1, round(w * s / side)),
            )
        else:
            place = (0, 0, s, s)
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
        return self.clip.normalize(x), place

    def saliency(self, image: np.ndarray, text: str) -> np.ndarray:
        """``H x W`` float32 saliency in [0, 1] of ``text`` in ``image`` (H x W x 3 uint8).

        Args:
            image: an H x W x 3 uint8 image.
            text: the text prompt.
        """
        image = self._check_image(image)
        pixels, (top, left, ph, pw) = self._pixels(image)
        sal = self.method(self.clip, pixels, self.text_features(text).to(pixels.device))
        sal = sal[top : top + ph, left : left + pw].float()
        sal = F.interpolate(sal[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        return sal.clamp(0, 1).detach().cpu().numpy().astype(np.float32)

    @staticmethod
    def _check_image(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageError(
                f"the saliency prompter needs an H x W x 3 uint8 RGB image, got {image.dtype} "
                f"{image.shape} (lvlm.io.load_image converts any image)"
            )
        return image

    # --- the Prompter interface ---------------------------------------------------------------
    def prompts(self, image: np.ndarray, text: str) -> tuple[Prompts, dict[str, Any]]:
        image = self._check_image(image)
        sal = self.saliency(image, text)
        sm = smooth(sal, self.sigma)
        extras: dict[str, Any] = {"saliency": sal, "smoothed": sm}
        final = sm
        if self.crf is not None:
            final = np.asarray(self.crf(image, sm), dtype=np.float32)
            extras["crf"] = final
        threshold = (0.5 if self.crf is not None else "otsu") if self.threshold == "auto" else self.threshold
        mask, t = binarize(final, threshold)
        extras["mask"] = mask
        extras["threshold"] = t
        mode = self.box_mode if self.box_mode != "none" else ("all" if self.max_boxes else "largest")
        boxes, regions = boxes_from_mask(mask, mode, self.min_area, self.max_boxes, saliency=sm)
        if not regions:
            return Prompts(), extras
        pts = labels = None
        if self.points or self.negative_points:
            pts, labels = points_for_regions(sm, regions, boxes, self.points, self.negative_points)
        return Prompts(
            boxes=None if self.box_mode == "none" else boxes, points=pts, point_labels=labels, text=text
        ), extras
