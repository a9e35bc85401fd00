"""The sam3 segmenter on a tiny random Sam3Model (real transformers classes), pinned against transformers'
processor, forward and post_process_instance_segmentation run by hand on the same weights."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from lvlm.errors import ConfigError, PromptError, WeightsError
from lvlm.pipeline import EmptyMaskWarning, Pipeline
from lvlm.registry import build
from lvlm.types import Prompts


@pytest.fixture(scope="module")
def seg():
    return build("segmenter", "sam3", model="tiny-random", device="cpu")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    img[10:40, 20:50] = (200, 200, 40)
    return img


def _by_hand(seg, image, text, boxes=None, threshold=0.3, mask_threshold=0.5):
    proc, net = seg.runner.processor, seg.runner.model
    kw = {}
    if boxes is not None:
        kw = {"input_boxes": [boxes], "input_boxes_labels": [[1] * len(boxes)]}
    inputs = proc(images=image, text=text, return_tensors="pt", **kw)
    with torch.inference_mode():
        out = net(**inputs)
    r = proc.post_process_instance_segmentation(
        out, threshold=threshold, mask_threshold=mask_threshold, target_sizes=[image.shape[:2]]
    )[0]
    order = torch.argsort(r["scores"], descending=True, stable=True)
    return r["masks"][order].numpy(), r["boxes"][order].numpy(), r["scores"][order].numpy()


def _same(cands, ref):
    masks, boxes, scores = ref
    assert len(cands) == len(masks) > 0
    np.testing.assert_allclose(cands.scores, scores, atol=1e-5)
    np.testing.assert_allclose(cands.boxes, boxes, atol=1e-4)
    # masks: equal except where the probability sits on the threshold within float noise
    assert (cands.masks != masks.astype(bool)).mean() < 1e-3


def test_defaults_are_transformers_post_processing_defaults(seg):
    import inspect

    from transformers import Sam3Processor

    sig = inspect.signature(Sam3Processor.post_process_instance_segmentation).parameters
    assert seg.threshold == sig["threshold"].default == 0.3
    assert seg.mask_threshold == sig["mask_threshold"].default == 0.5
    assert type(seg).text_conditioned is True


def test_text_only_equals_transformers(seg, image):
    cands = seg.segment(image, Prompts(text="yellow square"))
    assert cands.masks.shape[1:] == image.shape[:2]
    _same(cands, _by_hand(seg, image, "yellow square"))
    # the cached vision / text embeddings give the same answer again
    again = seg.segment(image, Prompts(text="yellow square"))
    np.testing.assert_array_equal(again.masks, cands.masks)


def test_box_exemplars_equal_transformers(seg, image):
    boxes = [[20.0, 10.0, 50.0, 40.0], [0.0, 0.0, 15.0, 12.0]]
    cands = seg.segment(image, Prompts(text="yellow square", boxes=boxes))
    _same(cands, _by_hand(seg, image, "yellow square", boxes=boxes))
    plain = seg.segment(image, Prompts(text="yellow square"))
    assert not np.allclose(plain.scores, cands.scores)  # the exemplars change the answer


def test_segment_many_equals_one_by_one(seg, image):
    imgs = [image, image[5:55, 10:70].copy(), image[::-1].copy()]
    prompts = [Prompts(text="cat"), Prompts(text="dog"), Prompts(text="cat", boxes=[[5, 5, 30, 30]])]
    many = seg.segment_many(imgs, prompts)
    for im, p, c in zip(imgs, prompts, many):
        one = seg.segment(im, p)
        np.testing.assert_allclose(c.scores, one.scores, atol=1e-4)
        assert (c.masks != one.masks).mean() < 1e-3


def test_alone_and_with_a_selector(image):
    pipe = Pipeline.from_config({"segmenter": {"name": "sam3", "model": "tiny-random", "device": "cpu"}})
    res = pipe(image, "yellow square")
    assert res.mask.shape == image.shape[:2]
    np.testing.assert_array_equal(res.mask, res.candidates.masks.any(0))
    inst = Pipeline.from_config(
        {"segmenter": {"name": "sam3", "model": "tiny-random", "device": "cpu"}, "combine": "instances"}
    )(image, "yellow square")
    assert inst.mask.shape == image.shape[:2]
    sel = Pipeline.from_config(
        {
            "segmenter": {"name": "sam3", "model": "tiny-random", "device": "cpu"},
            "selector": {"name": "clip", "model": "tiny-rn"},
        }
    )
    r = sel(image, "yellow square")
    assert r.mask.shape == image.shape[:2] and r.scores is not None and len(r.scores) == len(r.candidates)


def test_nothing_above_threshold_gives_empty_mask(image):
    pipe = Pipeline.from_config(
        {"segmenter": {"name": "sam3", "model": "tiny-random", "device": "cpu", "threshold": 1.0}}
    )
    with pytest.warns(EmptyMaskWarning):
        res = pipe(image, "cat")
    assert not res.mask.any() and res.mask.shape == image.shape[:2]


def test_bad_inputs(seg, image):
    with pytest.raises(PromptError, match="point"):
        seg.segment(image, Prompts(text="cat", points=[[3, 3]]))
    with pytest.raises(PromptError, match="text"):
        seg.segment(image, Prompts(boxes=[[1, 1, 9, 9]]))
    with pytest.raises(ConfigError, match="threshold"):
        build("segmenter", "sam3", model="tiny-random", threshold=2.0, device="cpu")


def test_offline_gated_preset_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        build("segmenter", "sam3", device="cpu")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "facebook/sam3" in msg and "request access" in msg and "\n" not in msg
