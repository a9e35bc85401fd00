"""gScoreCAM (Chen et al., ACCV 2022): Score-CAM on the top-k channels by gradient, batched on device.

For an image ``x`` and a text embedding ``t`` with CLIP logit ``s(x) = scale * cos(f(x), t)``:

1. one forward/backward pass gives the target layer's activations ``A`` (``C x h x w`` after
   ``clip.reshape_transform``) and the gradient of ``s`` w.r.t. them;
2. the ``k`` channels with the largest gradient (CNNs: mean over ``h x w``; ViTs: summed over every
   token, CLS included, as gScoreCAM's transformer path, since with CLS pooling the patch tokens of the
   last block get no gradient) are kept;
3. each kept channel, upsampled to ``S x S`` (bilinear, corners aligned) and min-max normalised, masks
   the input; the masked images' logits, softmaxed over the kept channels, weight the channels;
4. ``ReLU(sum_c w_c A_c)`` is min-max normalised, resized to ``S x S`` (bilinear) and normalised again.

With ``topk=None`` (every channel) this is exactly Score-CAM as pytorch-grad-cam computes it (the tests
check it to 1e-4). One deliberate difference from the gScoreCAM reference code: there, the channels not
kept get score 0 *before* the softmax (so weight ``exp(0)/Z`` each); here they get weight 0, which is
what the paper describes. All masked forwards run in batches of ``batch_size`` on the model's device;
nothing leaves the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.clip_base import ClipModel
from ..registry import register
from .cams import SaliencyMethod, as_text_features, clip_device, clip_logit_scale, clip_score, finish_cam


def resolve_topk(topk: float | str | None, channels: int) -> int:
    """Number of channels to keep: an int (clamped to ``channels``), a fraction in (0, 1], or
    ``None`` / ``"all"`` for every channel.

    Args:
        topk: a count, a fraction in (0, 1], ``None`` or ``"all"``.
        channels: the number of channels of the target layer.
    """
    if topk is None or topk == "all":
        return channels
    if isinstance(topk, bool) or not isinstance(topk, (int, float)):
        raise ValueError(f"topk={topk!r}: give a channel count (e.g. 300), a fraction (e.g. 0.1) or 'all'")  # noqa: TRY004
    if isinstance(topk, float) and 0 < topk <= 1:
        return max(1, min(channels, round(topk * channels)))
    if topk < 1 or int(topk) != topk:
        raise ValueError(f"topk={topk!r} must be a whole number of channels (>= 1) or a fraction in (0, 1]")
    return min(channels, int(topk))


def target_activations(clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor, scale: float):
    """``(A, importance, logit)``: target-layer activations ``1 x C x h x w`` (detached), one gradient
    importance per channel (``C``) and the logit, from one forward + backward pass.

    Args:
        clip: the CLIP model (its ``cam_target_layer()`` is hooked).
        pixels: the ``1 x 3 x S x S`` preprocessed image.
        text_features: the ``1 x D`` normalised text embedding.
        scale: the logit scale.
    """
    store: list[torch.Tensor] = []
    handle = clip.cam_target_layer().register_forward_hook(lambda m, i, o: store.append(o))
    try:
        with torch.enable_grad():
            x = pixels.detach().requires_grad_(True)  # makes the activations part of a graph
            logit = clip_score(clip, x, text_features, scale)[0]
            if not store:
                raise RuntimeError("the CAM target layer did not run during encode_image")
            raw = store[-1]
            (grad,) = torch.autograd.grad(logit, raw)
    finally:
        handle.remove()
    acts = clip.reshape_transform(raw.detach())
    if acts.ndim != 4 or acts.shape[0] != 1:
        raise ValueError(f"reshape_transform must give 1 x C x h x w activations, got {tuple(acts.shape)}")
    if getattr(clip, "is_vit", False):  # tokens x channels: gradient summed over every token (CLS included)
        importance = grad.reshape(-1, grad.shape[-1]).float().sum(0)
    else:
        importance = clip.reshape_transform(grad).float().mean(dim=(2, 3))[0]
    if importance.numel() != acts.shape[1]:
        raise ValueError(f"{importance.numel()} gradient channels but {acts.shape[1]} activation channels")
    return acts, importance, logit.detach()


def masked_logits(
    clip: ClipModel,
    pixels: torch.Tensor,
    text_features: torch.Tensor,
    acts: torch.Tensor,
    scale: float,
    batch_size: int,
    eps: float = 1e-8,
    progress: bool = False,
) -> torch.Tensor:
    """Logit of the image masked by each channel of ``acts`` (``1 x K x h x w``), upsampled to the input
    size (bilinear, corners aligned) and min-max normalised: ``K`` logits on the device.

    Args:
        clip: the CLIP model.
        pixels: the ``1 x 3 x S x S`` preprocessed image.
        text_features: the ``1 x D`` normalised text embedding.
        acts: the ``1 x K x h x w`` activations of the kept channels.
        scale: the logit scale.
        batch_size: masked images per forward pass.
        eps: added to the range of the min-max normalisation.
        progress: show a progress bar.
    """
    size = pixels.shape[-2:]
    k = acts.shape[1]
    scores = torch.empty(k, device=pixels.device, dtype=torch.float32)
    starts = range(0, k, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="gscorecam", unit="batch")
    with torch.inference_mode():
        for s in starts:
            up = F.interpolate(
                acts[:, s : s + batch_size].float(), size=size, mode="bilinear", align_corners=True
            )[0]
            mn = up.amin(dim=(1, 2), keepdim=True)
            mx = up.amax(dim=(1, 2), keepdim=True)
            up = (up - mn) / (mx - mn + eps)
            batch = pixels * up[:, None].to(pixels.dtype)  # b x 3 x S x S
            scores[s : s + batch_size] = clip_score(clip, batch, text_features, scale)
    return torch.nan_to_num(scores, nan=0.0)


@register(
    "saliency",
    "gscorecam",
    description="gScoreCAM (Chen et al. 2022): Score-CAM on the top-k channels "
    "by gradient, masked forwards batched on the model's device",
    source="ours (pure torch)",
)
class GScoreCAM(SaliencyMethod):
    """gScoreCAM on a CLIP model.

    Args:
        topk: channels kept (a count, a fraction such as 0.1, or ``None`` / ``"all"``: Score-CAM).
        batch_size: masked images per forward pass.
        logit_scale: temperature of the softmax over the masked logits (None: the model's own, 100 for
            trained CLIPs).
        progress: show a progress bar.
    """

    name = "gscorecam"

    def __init__(
        self,
        topk: float | str | None = 300,
        batch_size: int = 128,
        logit_scale: float | None = None,
        progress: bool = False,
    ) -> None:
        resolve_topk(topk, 10**9)  # validate early
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        self.topk = topk
        self.batch_size = int(batch_size)
        self.logit_scale = logit_scale
        self.progress = progress

    def __call__(self, clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        device = clip_device(clip)
        pixels = pixels.to(device)
        if pixels.ndim != 4 or pixels.shape[0] != 1:
            raise ValueError(f"pixels must be 1 x 3 x S x S, got {tuple(pixels.shape)}")
        t = as_text_features(text_features, device)
        scale = clip_logit_scale(clip, self.logit_scale)
        acts, importance, _ = target_activations(clip, pixels, t, scale)
        k = resolve_topk(self.topk, acts.shape[1])
        if k < acts.shape[1]:
            idx = importance.topk(k).indices
            acts = acts[:, idx]
        scores = masked_logits(clip, pixels, t, acts, scale, self.batch_size, progress=self.progress)
        weights = torch.softmax(scores, dim=0)
        cam = torch.einsum("c,chw->hw", weights, acts[0].float())
        return finish_cam(cam, tuple(pixels.shape[-2:]))
