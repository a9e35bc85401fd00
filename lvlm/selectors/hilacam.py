"""HilaCAM: gradient-weighted attention relevance for ViT CLIP models (Chefer et al., ICCV 2021).

For the CLIP logit ``s`` and the attention probabilities ``P_b`` (heads x N x N) of every image-encoder
block ``b``::

    R = I_N;  for b in blocks (input to output):  R = R + mean_heads(relu(dS/dP_b * P_b)) @ R

and the saliency is the CLS token's row ``R[0, 1:]`` on the patch grid, resized (bilinear) to the input
size and min-max normalised. The attention probabilities are made explicit by running each block's
``nn.MultiheadAttention`` as ``softmax(q k^T / sqrt(d)) v`` with the module's own weights during the one
forward pass (open_clip ViTs), or with timm's non-fused attention path (timm trunks such as BiomedCLIP),
so ``dS/dP`` comes from a single backward pass. Only ViT image towers have attention maps: other
models raise a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.clip_base import ClipModel
from ..registry import register
from .cams import SaliencyMethod, as_text_features, clip_device, clip_logit_scale, clip_score, minmax


def _explicit_mha(mha: torch.nn.MultiheadAttention, store: list[torch.Tensor]):
    """A drop-in ``forward`` for ``mha`` computing attention explicitly, appending ``B x H x L x S``
    probabilities (part of the graph) to ``store``."""

    def forward(
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError("hilacam: attention with bias_k / add_zero_attn is not supported")
        if not mha.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e, h = mha.embed_dim, mha.num_heads
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        bq = bk = bv = None
        if mha.in_proj_bias is not None:
            bq, bk, bv = mha.in_proj_bias.chunk(3)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        b, lq, _ = q.shape
        ls = k.shape[1]
        hd = e // h
        q = q.reshape(b, lq, h, hd).transpose(1, 2)
        k = k.reshape(b, ls, h, hd).transpose(1, 2)
        v = v.reshape(b, ls, h, hd).transpose(1, 2)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(attn_mask, float("-inf"))
            else:
                logits = logits + attn_mask
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
        probs = logits.softmax(dim=-1)
        store.append(probs)
        out = (probs @ v).transpose(1, 2).reshape(b, lq, e)
        out = mha.out_proj(out)
        if not mha.batch_first:
            out = out.transpose(0, 1)
        return out, None

    return forward


def attention_blocks(clip: ClipModel) -> tuple[str, list[torch.nn.Module]]:
    """``("open_clip", [nn.MultiheadAttention...])`` or ``("timm", [Attention...])`` of the image tower.

    Args:
        clip: a ViT CLIP model (open_clip or timm image tower).
    """
    visual = getattr(clip.model, "visual", clip.model)
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if resblocks is not None:
        attns = [blk.attn for blk in resblocks]
        if all(isinstance(a, torch.nn.MultiheadAttention) for a in attns):
            return "open_clip", attns
    blocks = getattr(getattr(visual, "trunk", None), "blocks", None)
    if blocks is not None:
        attns = [blk.attn for blk in blocks]
        if all(hasattr(a, "attn_drop") and hasattr(a, "fused_attn") for a in attns):
            return "timm", attns
    raise ConfigError(
        f"hilacam needs a ViT CLIP image tower (open_clip or timm attention blocks); "
        f"{getattr(clip, 'name', '') or type(clip).__name__} has none: use gscorecam instead"
    )


@contextmanager
def recorded_attention(clip: ClipModel) -> Iterator[list[torch.Tensor]]:
    """Within the context, every forward of the image tower appends each block's attention
    probabilities (``B x H x N x N``, differentiable) to the yielded list, in block order.

    Args:
        clip: a ViT CLIP model.
    """
    kind, attns = attention_blocks(clip)
    store: list[torch.Tensor] = []
    undo = []
    try:
        for a in attns:
            if kind == "open_clip":
                a.forward = _explicit_mha(a, store)
                undo.append(lambda a=a: a.__dict__.pop("forward", None))
            else:
                fused = a.fused_attn
                a.fused_attn = False
                h = a.attn_drop.register_forward_hook(lambda m, i, o: store.append(o))
                undo.append(lambda a=a, fused=fused, h=h: (setattr(a, "fused_attn", fused), h.remove()))
        yield store
    finally:
        for u in undo:
            u()


def relevance(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s rule: ``R = I + sum_b mean_heads(relu(grad_b * P_b)) @ R`` (N x N, first image).

    Args:
        probs: each block's attention probabilities, ``B x H x N x N``.
        grads: their gradients, same shapes.
    """
    n = probs[0].shape[-1]
    r = torch.eye(n, device=probs[0].device, dtype=torch.float32)
    for p, g in zip(probs, grads):
        cam = (g[0].float() * p[0].float()).clamp(min=0).mean(dim=0)
        r = r + cam @ r
    return r


@register(
    "saliency",
    "hilacam",
    description="gradient-weighted attention relevance for ViT CLIPs (Chefer et al. 2021)",
    source="ours (pure torch)",
)
class HilaCAM(SaliencyMethod):
    """HilaCAM on a ViT CLIP model (one forward + backward pass).

    Args:
        logit_scale: scale of the explained logit (only scales the map before normalisation; kept for
            symmetry with the other methods).
    """

    name = "hilacam"

    def __init__(self, logit_scale: float | None = None) -> None:
        self.logit_scale = logit_scale

    def __call__(self, clip: ClipModel, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        device = clip_device(clip)
        pixels = pixels.to(device)
        t = as_text_features(text_features, device)
        scale = clip_logit_scale(clip, self.logit_scale)
        with recorded_attention(clip) as store, torch.enable_grad():
            x = pixels.detach().requires_grad_(True)
            logit = clip_score(clip, x, t, scale)[0]
            probs = list(store)
        if not probs:
            raise RuntimeError("hilacam: no attention was recorded during encode_image")
        grads = torch.autograd.grad(logit, probs)
        with torch.no_grad():
            r = relevance([p.detach() for p in probs], grads)
        n = r.shape[0]
        g = math.isqrt(n - 1)
        if g * g == n - 1:  # CLS token first
            rel = r[0, 1:]
        elif math.isqrt(n) ** 2 == n:  # no CLS token: mean relevance of every token
            g = math.isqrt(n)
            rel = r.mean(dim=0)
        else:
            raise ValueError(f"hilacam: {n} tokens do not form a square patch grid (with or without CLS)")
        rel = rel.reshape(1, 1, g, g)
        size = tuple(pixels.shape[-2:])
        rel = F.interpolate(rel, size=size, mode="bilinear", align_corners=False)[0, 0]
        return minmax(rel.detach())
