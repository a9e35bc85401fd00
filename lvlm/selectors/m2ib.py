"""M2IB: multi-modal information bottleneck attribution on a ViT CLIP (Wang, Rudner & Wilson, NeurIPS 2023),
the saliency of MedCLIP-SAMv2 (Koleilat et al., 2024).

A bottleneck is put on the output ``x`` (B x N x D tokens) of one image-encoder block: with the learned
mask ``lambda = sigmoid(alpha)`` (one value per token and channel, ``alpha`` starting at 5) and features
standardised by the prior's standard deviation ``sqrt(var)`` (IBA's estimator, Schulz et al., ICLR 2020;
mean 0), the block passes on ``t = (lambda * x / std + (1 - lambda) * eps) * std`` with ``eps ~ N(0, 1)``.
``alpha`` is fitted by Adam (``lr``, ``steps``, ``samples`` noise draws per step) to minimise

    beta * mean(KL[N(lambda * x / std, (1 - lambda)^2) || N(0, 1)]) - mean(cos(image(t), text))

and the saliency is the KL of the last step, averaged over the draws and summed over channels, per
patch token (the CLS token dropped), on the patch grid, resized (bilinear) to the input and min-max
normalised. With ``var = 1`` this is MedCLIP-SAMv2's bottleneck exactly (its estimator has mean 0 and
std ``sqrt(var)``). The CLIP weights are not changed; only ``alpha`` gets gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.clip_base import ClipModel
from ..registry import register
from .cams import SaliencyMethod, as_text_features, clip_device, minmax


def vit_blocks(clip: ClipModel) -> list[torch.nn.Module]:
    """The transformer blocks of a ViT CLIP image tower (open_clip ``resblocks`` or a timm trunk's
    ``blocks``).

    Args:
        clip: a ViT CLIP model.
    """
    visual = getattr(clip.model, "visual", clip.model)
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if resblocks is not None:
        return list(resblocks)
    blocks = getattr(getattr(visual, "trunk", None), "blocks", None)
    if blocks is not None:
        return list(blocks)
    raise ConfigError(
        f"m2ib needs a ViT CLIP image tower (transformer blocks); "
        f"{getattr(clip, 'name', '') or type(clip).__name__} has none: use gscorecam instead"
    )


@register(
    "saliency",
    "m2ib",
    description="multi-modal information bottleneck on a ViT CLIP layer (Wang et al. 2023; MedCLIP-SAMv2)",
    source="ours (pure torch), after MedCLIP-SAMv2's M2IB",
)
class M2IB(SaliencyMethod):
    """M2IB saliency: a per-token, per-channel bottleneck on one ViT block, fitted to keep the image-text
    match.

    Args:
        layer: index of the image-encoder block whose output is bottlenecked (MedCLIP-SAMv2: 7).
        beta: weight of the compression term (0.1).
        var: variance of the prior the features are standardised by (1.0).
        steps: Adam steps (10).
        lr: Adam learning rate (1).
        samples: noise draws per step, as a batch (MedCLIP-SAMv2's batch size 10).
        seed: seed of the noise (reproducible maps).
    """

    name = "m2ib"

    def __init__(
        self,
        layer: int = 7,
        beta: float = 0.1,
        var: float = 1.0,
        steps: int = 10,
        lr: float = 1.0,
        samples: int = 10,
        seed: int = 0,
    ) -> None:
        if isinstance(layer, bool) or int(layer) < 0:
            raise ConfigError(f"m2ib layer={layer!r}: a block index >= 0")
        if float(var) <= 0:
            raise ConfigError(f"m2ib var={var!r}: must be > 0")
        if int(steps) < 1 or int(samples) < 1:
            raise ConfigError(f"m2ib steps={steps!r}, samples={samples!r}: both must be >= 1")
        if float(beta) < 0 or float(lr) <= 0:
            raise ConfigError(f"m2ib beta={beta!r} must be >= 0 and lr={lr!r} > 0")
        self.layer, self.beta, self.var = int(layer), float(beta), float(var)
        self.steps, self.lr, self.samples, self.seed = int(steps), float(lr), int(samples), int(seed)

    def __call__(self, clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        device = clip_device(clip)
        pixels = pixels.to(device)
        text = as_text_features(text_features, device).float()
        blocks = vit_blocks(clip)
        if self.layer >= len(blocks):
            raise ConfigError(
                f"m2ib layer={self.layer}: this image tower has {len(blocks)} blocks (0..{len(blocks) - 1})"
            )
        block = blocks[self.layer]
        batch = pixels.expand(self.samples, -1, -1, -1)
        std = math.sqrt(self.var)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        state: dict[str, torch.Tensor] = {}

        def tokens_first(out: torch.Tensor) -> bool:
            return out.shape[0] == self.samples  # batch-first (B, N, D); else (N, B, D)

        def bottleneck(module, inputs, output):
            x = output[0] if isinstance(output, tuple) else output
            bf = tokens_first(x)
            xb = x if bf else x.transpose(0, 1)
            if "alpha" not in state:
                state["alpha"] = torch.full((1, *xb.shape[1:]), 5.0, device=xb.device, requires_grad=True)
            lam = torch.sigmoid(state["alpha"]).expand_as(xb)
            mu = xb.float() * lam / std
            var = (1.0 - lam) ** 2
            state["capacity"] = -0.5 * (1.0 + torch.log(var) - mu**2 - var)  # KL to N(0, 1)
            eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
            t = ((mu + var.sqrt() * eps) * std).to(x.dtype)
            t = t if bf else t.transpose(0, 1)
            return (t, *output[1:]) if isinstance(output, tuple) else t

        was_training = clip.model.training
        clip.model.eval()
        handle = block.register_forward_hook(bottleneck)
        try:
            with torch.enable_grad():
                opt = None
                for _ in range(self.steps):
                    img = clip.encode_image(batch, normalize=True).float()
                    img = img / img.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                    fit = (img @ text.T)[:, 0].mean()
                    loss = self.beta * state["capacity"].mean() - fit
                    alpha = state["alpha"]
                    if opt is None:
                        opt = torch.optim.Adam([alpha], lr=self.lr)
                    (alpha.grad,) = torch.autograd.grad(loss, [alpha])
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        finally:
            handle.remove()
            clip.model.train(was_training)
        cap = state["capacity"].detach().mean(dim=0)  # N x D
        sal = torch.nansum(cap, dim=-1)
        n = sal.shape[0]
        g = math.isqrt(n - 1)
        if g * g == n - 1:
            sal = sal[1:]  # CLS token first
        elif math.isqrt(n) ** 2 == n:
            g = math.isqrt(n)
        else:
            raise ValueError(f"m2ib: {n} tokens do not form a square patch grid (with or without CLS)")
        sal = F.interpolate(
            sal.reshape(1, 1, g, g), size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False
        )[0, 0]
        return minmax(sal)

    def __repr__(self) -> str:
        return (
            f"M2IB(layer={self.layer}, beta={self.beta}, var={self.var}, steps={self.steps}, lr={self.lr}, "
            f"samples={self.samples})"
        )
