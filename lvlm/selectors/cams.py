"""Saliency (CAM) methods on a CLIP model: shared pieces, and the pytorch-grad-cam baselines.

A saliency method is registered under kind ``"saliency"`` and called as
``method(clip, pixels, text_features) -> S x S map``: ``pixels`` is a ``1 x 3 x S x S`` preprocessed
image on the model's device, ``text_features`` a ``1 x D`` L2-normalised text embedding; the map is a
float tensor in ``[0, 1]`` on the same device. The target of every method is the CLIP logit
``logit_scale * cos(image, text)`` (see :func:`clip_logit_scale`).

``scorecam`` and ``gradcam`` wrap `pytorch-grad-cam <https://github.com/jacobgil/pytorch-grad-cam>`_
(extra ``cam``) around a one-logit module (:class:`ClipSimilarity`); they are baselines and run that
library's own CPU-side loops. ``gscorecam`` (gscorecam.py) and ``hilacam`` (hilacam.py) are ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.clip_base import ClipModel
from ..registry import register

DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained temperature (exp(4.6052)), used when a model has none


class SaliencyMethod:
    """Image + text embedding -> saliency map on a CLIP model (``S x S`` in [0, 1], on the model's device)."""

    name = ""

    def __call__(self, clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def clip_logit_scale(clip: ClipModel, logit_scale: float | None = None) -> float:
    """The factor turning cosine similarity into CLIP's logit: ``logit_scale`` if given, else the model's
    learned ``exp(logit_scale)`` (open_clip), else 100.

    Args:
        clip: the CLIP model.
        logit_scale: an explicit scale, or None for the model's own.
    """
    if logit_scale is not None:
        return float(logit_scale)
    for owner in (clip, getattr(clip, "model", None)):
        ls = getattr(owner, "logit_scale", None)
        if isinstance(ls, torch.Tensor):
            return float(ls.detach().float().exp().reshape(-1)[0])
        if isinstance(ls, (int, float)):
            return float(ls)
    return DEFAULT_LOGIT_SCALE


def as_text_features(text_features: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A ``1 x D`` float tensor on ``device`` from a ``D`` or ``1 x D`` embedding.

    Args:
        text_features: one text embedding, ``D`` or ``1 x D``.
        device: the target device.
    """
    t = torch.as_tensor(text_features)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] != 1:
        raise ValueError(f"text_features must be D or 1 x D (one text), got shape {tuple(t.shape)}")
    return t.to(device)


def clip_score(
    clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor, scale: float
) -> torch.Tensor:
    """B CLIP logits ``scale * cos(image_b, text)`` (differentiable; computed in float32).

    Args:
        clip: the CLIP model.
        pixels: B x 3 x S x S preprocessed images.
        text_features: the ``1 x D`` normalised text embedding.
        scale: the logit scale.
    """
    img = clip.encode_image(pixels, normalize=True).float()
    img = img / img.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # in case a model skips normalising
    return scale * (img @ text_features.float().T)[:, 0]


def minmax(x: torch.Tensor, dims: tuple[int, ...] = (-2, -1), eps: float = 1e-7) -> torch.Tensor:
    """``(x - min) / (max - min + eps)`` over ``dims`` (pytorch-grad-cam's ``scale_cam_image`` divides
    ``x - min`` by ``eps + max(x - min)``: the same thing).

    Args:
        x: the tensor to normalise.
        dims: the dimensions the minimum and maximum are taken over.
        eps: added to the range (no division by zero).
    """
    mn = x.amin(dim=dims, keepdim=True)
    x = x - mn
    return x / (x.amax(dim=dims, keepdim=True) + eps)


def finish_cam(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Low-resolution ``h x w`` CAM -> ``size`` map in [0, 1], with pytorch-grad-cam's conventions:
    ReLU, min-max normalise, bilinear resize (half-pixel centres, as ``cv2.resize``), normalise again.

    Args:
        cam: the ``h x w`` map.
        size: the output ``(height, width)``.
    """
    cam = minmax(cam.float().clamp(min=0))
    cam = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return minmax(cam)


class ClipSimilarity(torch.nn.Module):
    """A CLIP model as a one-logit classifier: ``pixels -> B x 1`` logits ``scale * cos(image, text)``
    (what pytorch-grad-cam needs to explain the image-text similarity).

    Args:
        clip: the CLIP model.
        text_features: the text's embedding (``D`` or ``1 x D``, normalised).
        scale: the logit scale.
    """

    def __init__(self, clip: ClipModel, text_features: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.clip = clip
        self.net = clip.model  # registered, so pytorch-grad-cam finds the parameters' device
        self.register_buffer("text_features", as_text_features(text_features, clip_device(clip)).detach())
        self.scale = float(scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``B x 1`` logits of ``pixels``.

        Args:
            pixels: B x 3 x S x S preprocessed images.
        """
        return clip_score(self.clip, pixels, self.text_features, self.scale)[:, None]


def clip_device(clip: ClipModel) -> torch.device:
    """The device of the CLIP model's parameters (falls back to ``clip.device``).

    Args:
        clip: the CLIP model.
    """
    try:
        return next(clip.model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device(getattr(clip, "device", "cpu"))


class _GradCamLibrary(SaliencyMethod):
    """A pytorch-grad-cam method on the CLIP logit, at ``clip.cam_target_layer()``."""

    cam_class = ""

    def __init__(self, batch_size: int = 16, logit_scale: float | None = None) -> None:
        self.batch_size = int(batch_size)
        self.logit_scale = logit_scale

    def __call__(self, clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        from ..optional import require

        gc = require("pytorch_grad_cam", f"the {self.name} saliency method")
        targets = require("pytorch_grad_cam.utils.model_targets", f"the {self.name} saliency method")
        device = clip_device(clip)
        model = ClipSimilarity(clip, text_features, clip_logit_scale(clip, self.logit_scale))
        cam = getattr(gc, self.cam_class)(
            model=model, target_layers=[clip.cam_target_layer()], reshape_transform=clip.reshape_transform
        )
        cam.batch_size = self.batch_size
        try:
            with torch.enable_grad():
                out = cam(input_tensor=pixels.to(device), targets=[targets.ClassifierOutputTarget(0)])
        finally:
            cam.activations_and_grads.release()
        return torch.from_numpy(out[0]).to(device)


@register(
    "saliency",
    "scorecam",
    description="Score-CAM (Wang et al. 2020) via pytorch-grad-cam: every channel "
    "masks the image, softmaxed CLIP logits weight the channels",
    source="pytorch-grad-cam (extra cam)",
)
class ScoreCAM(_GradCamLibrary):
    """Score-CAM through pytorch-grad-cam on the image-text logit (every channel; slow, CPU-side loop)."""

    name = "scorecam"
    cam_class = "ScoreCAM"


@register(
    "saliency",
    "gradcam",
    description="Grad-CAM (Selvaraju et al. 2017) via pytorch-grad-cam on the image-text logit",
    source="pytorch-grad-cam (extra cam)",
)
class GradCAM(_GradCamLibrary):
    """Grad-CAM through pytorch-grad-cam: channels weighted by their mean gradient of the CLIP logit."""

    name = "gradcam"
    cam_class = "GradCAM"
