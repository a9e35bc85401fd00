"""The proposal stage for box-only models (lvlm.generators.proposals) on a synthetic blob image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lvlm.errors import ConfigError
from lvlm.generators.proposals import (
    ProposalGenerator,
    blob_boxes,
    mask_nms,
    otsu_threshold,
    region_boxes,
    split_touching,
)
from lvlm.types import Candidates

BLOBS = [(30, 30, 6), (90, 40, 9), (50, 100, 12), (130, 120, 7), (140, 30, 5)]  # (x, y, radius)


def blob_image(h=160, w=170, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(20, 3, (h, w))
    masks = []
    for x, y, r in BLOBS:
        m = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        img[m] = 180 + rng.normal(0, 5, m.sum())
        masks.append(m)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), np.stack(masks)


class ComponentSegmenter:
    """Fake box-prompted segmenter: the bright connected component under the box centre, inside the crop."""

    source = "fake"

    def __init__(self):
        self.crops = 0

    def _embed(self, image):
        self.crops += 1
        return image

    def _decode(self, crop, prompts, image):
        lab, _ = ndimage.label(crop[..., 0] > 100)
        masks = np.zeros((len(prompts),) + crop.shape[:2], bool)
        for k, (x0, y0, x1, y1) in enumerate(prompts.boxes):
            cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
            cy, cx = min(cy, crop.shape[0] - 1), min(cx, crop.shape[1] - 1)
            if lab[cy, cx]:
                masks[k] = lab == lab[cy, cx]
        return Candidates(masks, scores=np.full(len(prompts), 0.9))


def test_blob_boxes_find_the_blobs_at_their_scale():
    img, _ = blob_image()
    grey = img[..., 0] / 255.0
    boxes, _ = blob_boxes(grey, sigmas=(3, 4.5, 6.5, 9), threshold=0.05)
    for x, y, r in BLOBS:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        d = np.hypot(cx - x - 0.5, cy - y - 0.5)
        assert d.min() <= 2.0, (x, y, r)
        half = (boxes[d.argmin(), 2] - boxes[d.argmin(), 0]) / 2
        assert 0.6 * r <= half <= 1.8 * r, (r, half)  # radius sqrt(2) sigma ~ the blob's


def test_proposal_generator_finds_each_blob_once():
    img, gt = blob_image()
    seg = ComponentSegmenter()
    gen = ProposalGenerator(
        segmenter=seg, zoom={"context": 4.0, "min_crop": 16}, sigmas=(3, 4.5, 6.5, 9), min_area=10
    )
    out = gen.generate(img)
    assert len(out) == len(BLOBS)
    inter = (out.masks[:, None] & gt[None]).sum((2, 3))
    union = (out.masks[:, None] | gt[None]).sum((2, 3))
    iou = inter / union
    assert (iou.max(0) == 1.0).all()  # every blob found, exactly
    assert seg.crops <= out.extra["n_proposals"]
    assert gen.generate(img) is out  # cached per image


def test_mask_nms_and_otsu_by_hand():
    a = np.zeros((3, 10, 10), bool)
    a[0, 0:5, 0:5] = True  # 25 px
    a[1, 0:5, 0:4] = True  # 20 px, IoU 0.8 with a[0]
    a[2, 6:9, 6:9] = True
    assert mask_nms(a, np.array([0.9, 0.95, 0.5]), iou=0.5).tolist() == [1, 2]
    assert mask_nms(a, np.array([0.9, 0.95, 0.5]), iou=0.9, contained=1.0).tolist() == [1, 0, 2]
    t = otsu_threshold(np.r_[np.zeros(100), np.ones(100)])
    assert 0.0 < t < 1.0


def test_config_checks():
    with pytest.raises(ConfigError, match="polarity"):
        ProposalGenerator(segmenter=ComponentSegmenter(), polarity="up")
    with pytest.raises(ConfigError, match="no proposals"):
        ProposalGenerator(segmenter=ComponentSegmenter(), sigmas=[], region_sigmas=[])
    with pytest.raises(ConfigError, match="normalize"):
        ProposalGenerator(segmenter=ComponentSegmenter(), normalize="zscore")


def test_packaged_configs_build():
    from lvlm.generators.proposals import ProposalGenerator
    from lvlm.pipeline import Pipeline

    pipe = Pipeline.from_config("everything/litemedsam")
    assert isinstance(pipe.generator, ProposalGenerator) and pipe.takes_no_prompt
    assert pipe.generator.zoom.context == 4.0 and pipe.generator.norm == ("percentile", (0.5, 99.5))
    seg = Pipeline.from_config("sam/litemedsam_box_zoom").segmenter
    assert seg.zoom is not None and (seg.zoom.context, seg.zoom.box_margin) == (3.5, 2)
    assert Pipeline.from_config("sam/litemedsam_box").segmenter.zoom is None  # off by default


def test_touching_discs_split_into_one_box_each():
    h, w = 80, 120
    yy, xx = np.mgrid[:h, :w]
    discs = [(40, 40, 12), (62, 40, 12), (95, 40, 8)]  # the first two touch (overlap), the third stands apart
    masks = np.stack([(xx - x) ** 2 + (yy - y) ** 2 <= r * r for x, y, r in discs])
    fg = masks.any(0)
    assert ndimage.label(fg)[1] == 2
    lab, n = split_touching(fg, min_distance=6)
    assert n == 3
    for (x, y, _), m in zip(discs, masks):  # each disc's centre in its own segment, which covers most of it
        seg = lab == lab[y, x]
        assert (seg & m).sum() / (seg | m).sum() > 0.8
    grey = fg.astype(np.float64)
    whole = region_boxes(grey, [0.0], min_area=10, max_area=1.0)
    split = region_boxes(grey, [0.0], min_area=10, max_area=1.0, split_distance=6)
    assert len(whole) == 2 and len(split) == 3
    truth = np.array([[x - r, y - r, x + r + 1, y + r + 1] for x, y, r in discs], np.float32)
    np.testing.assert_allclose(split[np.argsort(split[:, 0])], truth, atol=2)
