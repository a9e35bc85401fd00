"""Models for tests and benchmarks that need no downloadable weights (never used by the library itself).

:func:`point_local_sam` turns a randomly initialised segment_anything SAM into one whose point prompts give
realistic nested masks, so everything mode can be tested and timed offline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


@torch.no_grad()
def point_local_sam(
    model: Any, seed: int = 0, sharpness: float = 3.0, frequency: float = 0.6, image_weight: float = 0.15
) -> Any:
    """Re-initialise a ``segment_anything`` SAM's prompt encoder and mask decoder (in place) so that a point
    prompt gives three nested blobs around the point, shaped by the image embedding.

    For tests and benchmarks of everything mode without downloadable weights: a purely random decoder gives
    scattered masks that all collapse to one after box NMS, this one gives a realistic number of distinct
    masks, predicted IoUs around 0.9 and stability scores near 1. Same architecture and shapes; only the
    values of some weights change. The image encoder is kept (random or not); its last normalisation is
    scaled by ``image_weight`` (how much the image shapes the blobs) and zeroed on the channels used for
    positions.

    Construction: the positional encoding keeps ``K`` low frequencies; the point token and the image
    positions meet in the first image-to-token attention, whose logits become a kernel of the distance
    between pixel and point; its output moves the image tokens along one direction in proportion to the
    attention on the point token; the upscaling is made nearest-neighbour and the hypernetwork outputs
    constant vectors that threshold that direction at three levels.

    Args:
        model: a ``segment_anything`` ``Sam`` (changed in place and returned).
        seed: the seed of the re-initialised weights.
        sharpness: how sharply the attention falls off with the distance to the point.
        frequency: the scale of the kept positional-encoding frequencies.
        image_weight: how much the image embedding shapes the blobs.
    """
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    dec, pe = model.mask_decoder, model.prompt_encoder
    tr = dec.transformer
    c = dec.transformer_dim
    f = c // 2
    blk0 = tr.layers[0]
    x_attn = blk0.cross_attn_image_to_token
    heads = x_attn.num_heads
    ch = x_attn.internal_dim // heads
    k_freq = min(ch // 2, f - 8)
    n_tok = dec.num_mask_tokens + 3  # iou, mask tokens, pad, point
    if k_freq < 2 or f < k_freq + n_tok or tr.layers[0].self_attn.internal_dim // heads < n_tok:
        raise ValueError(f"transformer_dim {c} with {heads} heads is too small for point_local_sam")
    dev = dec.iou_token.weight.device

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dev)

    act = list(range(k_freq)) + [f + i for i in range(k_freq)]  # sin and cos dims of the kept frequencies
    res = [k_freq + i for i in range(n_tok)]  # sin dims of zero frequencies: always 0 in the encoding
    other = [i for i in range(c) if i not in act and i not in res]
    r_iou, r_mask, r_pad, r_point = res[0], res[1 : 1 + dec.num_mask_tokens], res[-2], res[-1]

    # positional encoding: K frequencies on evenly spread directions, the rest zero
    ang = torch.arange(k_freq, dtype=torch.float32) * (np.pi * 0.618034 * 2)  # golden-angle directions
    mag = frequency * torch.linspace(0.6, 1.4, k_freq)
    gm = torch.zeros(2, f)
    gm[0, :k_freq], gm[1, :k_freq] = mag * torch.cos(ang), mag * torch.sin(ang)
    pe.pe_layer.positional_encoding_gaussian_matrix.copy_(gm.to(dev))

    beta = 4.0

    def token(r):  # a token: a one-hot in its reserved dim plus noise in the free dims
        t = torch.zeros(c, device=dev)
        t[other] = 0.5 * rnd(len(other))
        t[r] = beta
        return t

    dec.iou_token.weight.copy_(token(r_iou)[None])
    dec.mask_tokens.weight.copy_(torch.stack([token(r) for r in r_mask]))
    pe.not_a_point_embed.weight.copy_(token(r_pad)[None])
    pe.point_embeddings[1].weight.zero_()
    pe.point_embeddings[1].weight[0, r_point] = beta
    pe.no_mask_embed.weight[0, act + res] = 0.0
    neck = getattr(model.image_encoder, "neck", None)
    if isinstance(neck, nn.Sequential) and hasattr(neck[-1], "weight") and neck[-1].weight.shape == (c,):
        neck[-1].weight.mul_(image_weight)
        neck[-1].bias.mul_(image_weight)
        neck[-1].weight[act + res] = 0.0
        neck[-1].bias[act + res] = 0.0

    def zero(lin):
        lin.weight.zero_()
        if lin.bias is not None:
            lin.bias.zero_()

    for i, blk in enumerate(tr.layers):
        zero(blk.cross_attn_token_to_image.out_proj)
        zero(blk.mlp.lin2)
        if i > 0:
            zero(blk.self_attn.out_proj)
            zero(blk.cross_attn_image_to_token.out_proj)
    # layer 0 self-attention (no residual): each token attends to itself only, values pass through
    sa = blk0.self_attn
    ch_s = sa.internal_dim // sa.num_heads
    for lin in (sa.q_proj, sa.k_proj):
        zero(lin)
        for h in range(sa.num_heads):
            for j, r in enumerate(res):
                lin.weight[h * ch_s + j, r] = 2.0
    for lin in (sa.v_proj, sa.out_proj):
        zero(lin)
        lin.weight.copy_(torch.eye(c, device=dev))
    for norm in (blk0.norm1, blk0.norm2, blk0.norm3):  # keep only the token identities
        norm.weight.zero_()
        norm.bias.zero_()
        norm.weight[res] = 1.0
    # layer 0 image-to-token attention: logits = kernel(pixel, point) in every head; value: "is the point"
    s2 = sharpness * np.sqrt(ch) / k_freq
    for lin in (x_attn.q_proj, x_attn.k_proj):
        zero(lin)
        for h in range(heads):
            for j, d in enumerate(act):
                lin.weight[h * ch + j, d] = float(np.sqrt(s2))
    zero(x_attn.v_proj)
    zero(x_attn.out_proj)
    direction = torch.zeros(c, device=dev)
    direction[other] = rnd(len(other))
    direction /= direction.norm()
    for h in range(heads):
        x_attn.v_proj.weight[h * ch, r_point] = 1.0
        x_attn.out_proj.weight[:, h * ch] = direction * (0.5 * np.sqrt(c) / heads)
    # upscaling: nearest-neighbour (tap-constant transposed convs) and one constant output channel
    convs = [m for m in dec.output_upscaling if isinstance(m, nn.ConvTranspose2d)]
    for conv in convs:
        conv.weight.copy_(conv.weight.mean((2, 3), keepdim=True).expand_as(conv.weight))
    convs[-1].weight[:, 0] = 0.0
    convs[-1].bias[0] = 1.0
    # calibrate the hypernetwork outputs on a zero image embedding with one point at the centre
    size = pe.input_image_size
    emb = torch.zeros(1, c, *pe.image_embedding_size, device=dev)
    cap = {}
    hook = dec.output_upscaling.register_forward_hook(lambda m, i, o: cap.setdefault("u", o))
    for mlp in dec.output_hypernetworks_mlps:
        for lin in mlp.layers:
            zero(lin)
    iou_last = dec.iou_prediction_head.layers[-1]
    pts = torch.tensor([[[size[1] / 2, size[0] / 2]]], device=dev)
    sparse, dense = pe(points=(pts, torch.ones(1, 1, device=dev)), boxes=None, masks=None)
    dec.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
    hook.remove()
    u = cap["u"][0]  # C/8 x H x W
    hh, ww = u.shape[1:]
    centre, far = u[:, hh // 2, ww // 2], u[:, 0, 0]
    d = centre - far
    d[0] = 0.0
    lo, hi = float(d @ far), float(d @ centre)
    lam = 40.0 / max(hi - lo, 1e-6)
    const = float(u[0, 0, 0])
    levels = np.linspace(0.8, 0.3, dec.num_mask_tokens)  # fraction of the way from far to centre
    for mlp, lv in zip(dec.output_hypernetworks_mlps, levels):
        vec = lam * d
        vec[0] = -lam * (lo + lv * (hi - lo)) / const
        mlp.layers[-1].bias.copy_(vec)
    # predicted IoU: around 0.9, varying with the point
    iou_last.weight.mul_(0.05 / max(float(iou_last.weight.std()), 1e-6) / np.sqrt(iou_last.in_features))
    iou_last.bias.fill_(0.9)
    return model
