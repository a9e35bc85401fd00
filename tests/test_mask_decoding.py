"""``lvlm.models.mask_decoding.decode_many`` against segment_anything's own ``MaskDecoder`` forward.

Same modules, same weights, same prompts: the low-res logits and predicted IoU equal the official decoder's
(called once per image, as ``SamPredictor.predict_torch`` does) to float rounding, for boxes, points, both,
single and multimask output, several images in one call with the prompts in any order, SAM ViT's decoder
(256 channels, the same in ViT-H/L/B, MobileSAM and MedSAM), the tiny test SAM and LiteMedSAM's real weights.
Through the adapters, ``predict_many`` gives segment_anything's ``SamPredictor`` masks.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lvlm.models.mask_decoding import decode_many, supports


def _sam_vit_decoder():
    """SAM ViT's prompt encoder and mask decoder (the configuration of ``build_sam_vit_*``), random."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(0)
    pe = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    dec = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return pe.eval(), dec.eval(), 1024


@functools.cache
def _tiny():
    from lvlm.models.sam import build_sam

    m = build_sam("vit_tiny", None, "cpu", encoder_backend="torch")
    return m.prompt_encoder, m.mask_decoder, 256


@functools.cache
def _litemedsam():
    from lvlm.models.sam import build_litemedsam

    m = build_litemedsam("default", "cpu", encoder_backend="torch")
    return m.prompt_encoder, m.mask_decoder, 256


MODELS = {"sam-vit": _sam_vit_decoder, "vit_tiny": _tiny, "litemedsam": _litemedsam}


def _prompts(kind: str, k: int, size: int, g: torch.Generator):
    boxes = points = labels = None
    if kind in ("boxes", "boxes+points"):
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        boxes = torch.cat([xy, xy + 8 + torch.rand(k, 2, generator=g) * size * 0.35], 1)
    if kind in ("points", "boxes+points"):
        points = torch.rand(k, 2, 2, generator=g) * size
        labels = torch.randint(0, 2, (k, 2), generator=g)
    if kind == "point":
        points = torch.rand(k, 1, 2, generator=g) * size
        labels = torch.ones(k, 1, dtype=torch.long)
    return boxes, points, labels


def _official(pe, dec, feats, idx, boxes, points, labels, multimask):
    """The official decoder once per image (SamPredictor.predict_torch's call), rows back in prompt order."""
    low = iou = None
    for i in range(feats.shape[0]):
        rows = (idx == i).nonzero()[:, 0]
        if len(rows) == 0:
            continue
        pts = None if points is None else (points[rows], labels[rows])
        sparse, dense = pe(points=pts, boxes=None if boxes is None else boxes[rows], masks=None)
        lo, io = dec(
            image_embeddings=feats[i : i + 1],
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        if low is None:
            low = lo.new_zeros((len(idx),) + tuple(lo.shape[1:]))
            iou = io.new_zeros((len(idx),) + tuple(io.shape[1:]))
        low[rows], iou[rows] = lo, io
    return low, iou


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("kind", ["boxes", "point", "points", "boxes+points"])
@pytest.mark.parametrize("multimask", [False, True])
def test_decode_many_equals_the_official_decoder(model, kind, multimask):
    pe, dec, size = MODELS[model]()
    assert supports(dec)
    g = torch.Generator().manual_seed(1)
    c, (h, w) = dec.transformer_dim, pe.image_embedding_size
    feats = torch.randn(3, c, h, w, generator=g)
    idx = torch.tensor([2, 0, 0, 1, 2, 0, 1])  # three images, prompts interleaved
    boxes, points, labels = _prompts(kind, len(idx), size, g)
    with torch.no_grad():
        ref_low, ref_iou = _official(pe, dec, feats, idx, boxes, points, labels, multimask)
        low, iou = decode_many(pe, dec, feats, idx, boxes, points, labels, multimask)
    assert low.shape == ref_low.shape == (len(idx), 3 if multimask else 1, 4 * h, 4 * w)
    assert iou.shape == ref_iou.shape
    scale = float(ref_low.abs().max())
    assert float((low - ref_low).abs().max()) <= 1e-5 * max(1.0, scale)
    assert float((iou - ref_iou).abs().max()) <= 1e-5


def test_decode_prompts_fast_and_official_paths_agree_and_handle_no_prompts():
    from lvlm.models.sam import decode_prompts

    pe, dec, size = _tiny()
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, dec.transformer_dim, *pe.image_embedding_size, generator=g)
    boxes, _, _ = _prompts("boxes", 9, size, g)
    idx = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    fast = decode_prompts(pe, dec, feats, boxes, batch_size=4, image_index=idx)
    slow = decode_prompts(pe, dec, feats, boxes, batch_size=4, image_index=idx, fast=False)
    assert torch.allclose(fast[0], slow[0], atol=1e-5) and torch.allclose(fast[1], slow[1], atol=1e-6)
    low, iou = decode_prompts(pe, dec, feats[:1], torch.zeros((0, 4)))
    assert low.shape == (0, 1, 4 * pe.image_embedding_size[0], 4 * pe.image_embedding_size[1])
    assert iou.shape == (0,)
    with pytest.raises(ValueError, match="image_index"):
        decode_prompts(pe, dec, feats, boxes)


def test_supports_only_segment_anythings_structure():
    from torch import nn

    _, dec, _ = _tiny()
    assert supports(dec)
    assert not supports(nn.Linear(2, 2))
    pytest.importorskip("sam2")
    from lvlm.models.sam2 import build_sam2_model

    sam2 = build_sam2_model("tiny_random", device="cpu")
    assert not supports(sam2.sam_mask_decoder)  # its own forward (object score, high-res features)


def _images():
    rng = np.random.default_rng(5)
    out = []
    for h, w in [(96, 128), (80, 80), (70, 120)]:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 255, 3)
        out.append(img)
    return out


def _boxes(img, n, seed):
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    x0, y0 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    return np.stack([x0, y0, x0 + rng.uniform(8, w / 2, n), y0 + rng.uniform(8, h / 2, n)], 1)


def test_sam_segment_many_shares_decoder_calls_and_equals_sam_predictor(monkeypatch):
    from segment_anything import SamPredictor

    import lvlm.models.mask_decoding as md
    from lvlm.registry import build
    from lvlm.types import Prompts

    seg = build("segmenter", "sam", model_type="vit_tiny", checkpoint=None, device="cpu", batch_size=64)
    images = _images()
    prompts = [Prompts(boxes=_boxes(im, n, k)) for k, (im, n) in enumerate(zip(images, (3, 1, 4)))]
    calls = []
    original = md.decode_many
    monkeypatch.setattr(md, "decode_many", lambda *a, **k: calls.append(len(a[3])) or original(*a, **k))
    many = seg.segment_many(images, prompts)
    assert calls == [8]  # the 8 boxes of the 3 images in one decoder call
    predictor = SamPredictor(seg.model)
    for img, pr, got in zip(images, prompts, many):
        predictor.set_image(img)
        bt = torch.as_tensor(pr.boxes, dtype=torch.float32)
        bt = predictor.transform.apply_boxes_torch(bt, img.shape[:2])
        masks, iou, _ = predictor.predict_torch(None, None, boxes=bt, multimask_output=False)
        ref = masks[:, 0].numpy()
        assert got.masks.shape == ref.shape
        assert 0.01 < ref.mean() < 0.99  # masks with both values, so the comparison means something
        assert np.mean(got.masks != ref) < 1e-4  # a logit at the threshold may round either way
        np.testing.assert_allclose(got.scores, iou[:, 0].numpy(), atol=1e-5)
