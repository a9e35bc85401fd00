"""SAM's mask decoder run on many prompts over many images at once, rearranged to do less work.

segment_anything's ``MaskDecoder.predict_masks`` copies the image embedding and its positional encoding once
per prompt, then runs every step of the two-way transformer on those copies. :func:`decode_many` computes the
same function (the same modules and weights; outputs equal to float rounding, pinned against the official
decoder in ``tests/test_mask_decoding.py``) with four changes:

- the prompts of several images go through one call, each prompt pointing at its image (``image_index``);
- the first block's image-side projections (the keys and values of the token-to-image attention and the
  queries of the image-to-token attention) do not depend on the prompt when no mask is given, so they are
  computed once per image instead of once per prompt;
- the image-to-token attention (many image queries, a handful of token keys) builds its scores transposed
  from block-diagonal keys (no per-head copy of the image queries), takes the softmax over the short token
  axis, and applies the output projection to the token values before the product with the weights;
- the image tokens stay in one (B, HW, C) layout, and the upscaling's two stride-2 transposed convolutions run
  as matrix products on that layout; only the selected masks' hypernetwork outputs are computed.

It applies to segment_anything's ``MaskDecoder`` / ``TwoWayTransformer`` and to the copies of them that
MobileSAM, MedSAM and LiteMedSAM use (same modules); :func:`supports` says whether a decoder has that
structure. Inference only (no mask prompt); training keeps the official forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["decode_many", "sam_postprocess_masks", "supports"]

_BLOCK_PARTS = ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token", "mlp", "norm4")
_DECODER_PARTS = (
    "iou_token",
    "mask_tokens",
    "output_upscaling",
    "output_hypernetworks_mlps",
    "iou_prediction_head",
    "num_mask_tokens",
)


def supports(mask_decoder: Any) -> bool:
    """True when ``mask_decoder`` has segment_anything's ``MaskDecoder`` structure (a two-way transformer,
    the iou / mask tokens, a two-step transposed-convolution upscaling), which :func:`decode_many` computes.

    SAM 2's decoder (object-score token, high-resolution features) does not, and keeps its own forward.

    Args:
        mask_decoder: a mask decoder module.
    """
    import torch

    if any(not hasattr(mask_decoder, a) for a in _DECODER_PARTS) or hasattr(mask_decoder, "obj_score_token"):
        return False
    tr = getattr(mask_decoder, "transformer", None)
    if tr is None or not hasattr(tr, "final_attn_token_to_image") or not hasattr(tr, "layers"):
        return False
    if any(not all(hasattr(b, a) for a in _BLOCK_PARTS) for b in tr.layers):
        return False
    up = list(mask_decoder.output_upscaling)
    if len(up) != 5 or not all(isinstance(up[i], torch.nn.ConvTranspose2d) for i in (0, 3)):
        return False
    return all(
        tuple(c.kernel_size) == (2, 2) and tuple(c.stride) == (2, 2) and tuple(c.padding) == (0, 0)
        for c in (up[0], up[3])
    )


def _heads(x, n: int):
    b, t, c = x.shape
    return x.view(b, t, n, c // n).transpose(1, 2)


def _merge_heads(x):
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _token_attention(attn, q, k, v):
    """An ``Attention`` module's attention of a few token queries on projected q / k / v (B x T x Ci)."""
    import torch.nn.functional as F

    n = attn.num_heads
    out = F.scaled_dot_product_attention(_heads(q, n), _heads(k, n), _heads(v, n))
    return attn.out_proj(_merge_heads(out))


def _image_attention(attn, q, k, v):
    """An ``Attention`` module's attention of many image queries (B x HW x Ci) on a few token keys and
    values (B x T x Ci), output projection included.

    The scores are built transposed (B x heads x T x HW), from block-diagonal keys so the image queries are
    used as they are, and normalised over the short T axis; the output projection is applied to the values
    first (per head: T x C), so the image side needs one product with inner size heads x T and no head
    merge."""
    import torch

    n = attn.num_heads
    kh, vh = _heads(k, n), _heads(v, n)
    b, _, t, d = kh.shape
    hw = q.shape[1]
    # the keys of head h only in head h's columns (B x (n T) x Ci): all heads' scores in one product with the
    # B x HW x Ci queries as they are (no per-head copy of the large side)
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    blocks = (kh[:, :, :, None, :] * eye[None, :, None, :, None]).reshape(b, n * t, n * d)
    scores = torch.bmm(blocks, q.transpose(1, 2)).view(b, n, t, hw) * (1.0 / math.sqrt(d))
    weights = torch.softmax(scores, dim=-2).reshape(b, n * t, hw)
    w_out = attn.out_proj.weight  # C x Ci, Ci = n d
    c = w_out.shape[0]
    values = torch.matmul(vh, w_out.view(c, n, d).permute(1, 2, 0)).reshape(b, n * t, c)  # B (n T) C
    out = torch.bmm(weights.transpose(1, 2), values)
    return out + attn.out_proj.bias if attn.out_proj.bias is not None else out


def _conv_t2(conv, x, h: int, w: int):
    """A 2x2 stride-2 ``ConvTranspose2d`` on a B x (h w) x Cin token layout, as one matrix product: returns
    B x h x w x 2 x 2 x Cout in token order (row, col, dy, dx)."""
    import torch.nn.functional as F

    b = x.shape[0]
    weight = conv.weight  # Cin x Cout x 2 x 2
    cout = weight.shape[1]
    mat = weight.permute(2, 3, 1, 0).reshape(4 * cout, weight.shape[0])  # (dy dx Cout) x Cin
    bias = None if conv.bias is None else conv.bias.repeat(4)
    return F.linear(x.reshape(b, h * w, -1), mat, bias).view(b, h, w, 2, 2, cout)


#: image-side floats per chunk of the upscaling (a chunk's largest tensor: prompts x 16 h w x C/8)
UPSCALE_CHUNK_FLOATS = 1 << 21


def _upscaled_masks(decoder, keys, hyper, h: int, w: int):
    """``output_upscaling`` of the image tokens (B x HW x C), then the masks ``hyper`` (B x M x C/8) picks,
    in chunks of prompts whose upscaled tensors stay near ``UPSCALE_CHUNK_FLOATS`` floats (large decoders
    upscale each prompt to 8 MB; whole batches of them would leave every cache)."""
    import torch

    per_prompt = 16 * h * w * max(1, keys.shape[-1] // 8)
    step = max(1, UPSCALE_CHUNK_FLOATS // per_prompt)
    if keys.shape[0] <= step:
        return _upscaled_chunk(decoder, keys, hyper, h, w)
    return torch.cat(
        [
            _upscaled_chunk(decoder, keys[s : s + step], hyper[s : s + step], h, w)
            for s in range(0, keys.shape[0], step)
        ]
    )


def _upscaled_chunk(decoder, keys, hyper, h: int, w: int):
    """``output_upscaling`` of the image tokens (B x HW x C), then the masks ``hyper`` (B x M x C/8) picks:
    B x M x 4h x 4w."""
    import torch.nn.functional as F

    conv1, norm, act1, conv2, act2 = list(decoder.output_upscaling)
    b = keys.shape[0]
    y = _conv_t2(conv1, keys, h, w)  # B h w 2 2 C/4
    y = F.layer_norm(y, y.shape[-1:], norm.weight, norm.bias, norm.eps)
    y = act1(y)
    c4 = y.shape[-1]
    # second convolution per (row, col, dy, dx) position of the first: 2h*2w sites
    z = _conv_t2(conv2, y.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h * 2 * w, c4), 2 * h, 2 * w)
    z = act2(z)  # B 2h 2w 2 2 C/8
    masks = z.reshape(b, -1, z.shape[-1]) @ hyper.transpose(1, 2)  # B (2h 2w 2 2) M
    m = hyper.shape[1]
    masks = masks.view(b, 2 * h, 2 * w, 2, 2, m).permute(0, 5, 1, 3, 2, 4)
    return masks.reshape(b, m, 4 * h, 4 * w)


def decode_many(
    prompt_encoder: Any,
    mask_decoder: Any,
    features: Any,
    image_index: Any,
    boxes: Any = None,
    points: Any = None,
    labels: Any = None,
    multimask: bool = False,
):
    """Low-res mask logits (B x 1|3 x 4h x 4w) and predicted IoU (B x 1|3) of B prompts, each on its image.

    Equal to segment_anything's ``mask_decoder(image_embeddings=features[i:i+1], image_pe=..., sparse, dense,
    multimask_output=multimask)`` per image (see the module docstring for what differs in the computation).

    Args:
        prompt_encoder: the model's prompt encoder.
        mask_decoder: the model's mask decoder (:func:`supports` must be true).
        features: N x C x h x w image embeddings.
        image_index: B long tensor: the image of each prompt (row of ``features``).
        boxes: B x 4 boxes in the model frame, or None.
        points: B x P x 2 points in the model frame, or None.
        labels: B x P point labels, with ``points``.
        multimask: the decoder's 3 ambiguity masks per prompt instead of the single one.
    """
    import torch

    dec, tr = mask_decoder, mask_decoder.transformer
    pts = None if points is None else (points, labels)
    sparse, _ = prompt_encoder(points=pts, boxes=boxes, masks=None)
    h, w = features.shape[-2:]
    b = sparse.shape[0]
    idx = torch.as_tensor(image_index, dtype=torch.long, device=features.device)
    if idx.shape != (b,):
        raise ValueError(f"image_index has shape {tuple(idx.shape)}; expected ({b},), one image per prompt")
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
    no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    image = (features + no_mask).flatten(2).transpose(1, 2).contiguous()  # N x HW x C, shared by its prompts
    pe = prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()  # 1 x HW x C
    queries, keys = tokens, None
    for layer in tr.layers:
        first = keys is None  # image tokens still shared by all prompts of an image
        src = image if first else keys
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        src_pe = src + pe
        a = layer.cross_attn_token_to_image
        k_img, v_img = a.k_proj(src_pe), a.v_proj(src)
        if first:
            k_img, v_img = k_img[idx], v_img[idx]
        queries = layer.norm2(queries + _token_attention(a, a.q_proj(queries + tokens), k_img, v_img))
        queries = layer.norm3(queries + layer.mlp(queries))
        a = layer.cross_attn_image_to_token
        q_img = a.q_proj(src_pe)
        if first:
            q_img, src = q_img[idx], src[idx]
        q_tok = queries + tokens
        keys = layer.norm4(src + _image_attention(a, q_img, a.k_proj(q_tok), a.v_proj(queries)))
    a = tr.final_attn_token_to_image
    attn = _token_attention(a, a.q_proj(queries + tokens), a.k_proj(keys + pe), a.v_proj(keys))
    queries = tr.norm_final_attn(queries + attn)
    iou = dec.iou_prediction_head(queries[:, 0])
    chosen = list(range(1, dec.num_mask_tokens)) if multimask else [0]
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in chosen], dim=1)
    return _upscaled_masks(dec, keys, hyper, h, w), iou[:, chosen]


def sam_postprocess_masks(masks: Any, img_size: int, input_size: Sequence[int], original_size: Sequence[int]):
    """``segment_anything.modeling.Sam.postprocess_masks`` that skips the rows and columns of the first
    upsampling which the crop to ``input_size`` drops: bit-identical output (the first resize keeps its exact
    1:4 scale and every kept pixel its two source rows / columns), less work on non-square images.

    Args:
        masks: B x C x h x w low-resolution mask logits.
        img_size: the model's square input size (1024 for SAM).
        input_size: ``(h, w)`` of the resized image inside the padded input.
        original_size: ``(H, W)`` of the original image.
    """
    import torch.nn.functional as F

    lh, lw = masks.shape[-2:]
    if lh == img_size and lw == img_size:  # already at the input size (LiteMedSAM): crop, resize
        m = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(m, tuple(original_size), mode="bilinear", align_corners=False)
    fh, fw = img_size // lh, img_size // lw
    if fh * lh != img_size or fw * lw != img_size:  # not an integer factor: do exactly what SAM does
        m = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
    else:
        kh = min(lh, math.ceil(input_size[0] / fh) + 1)
        kw = min(lw, math.ceil(input_size[1] / fw) + 1)
        m = F.interpolate(masks[..., :kh, :kw], (kh * fh, kw * fw), mode="bilinear", align_corners=False)
    m = m[..., : input_size[0], : input_size[1]]
    return F.interpolate(m, tuple(original_size), mode="bilinear", align_corners=False)
