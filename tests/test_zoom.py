"""Zoomed prompts (lvlm.segmenters.zoom): windows, paste-back at the input resolution, real LiteMedSAM
gain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lvlm.errors import ConfigError
from lvlm.segmenters.zoom import (
    ZoomSettings,
    assign_windows,
    crop_window,
    grid_windows,
    segment_zoomed,
    zoom_settings,
)
from lvlm.types import Candidates, Prompts

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuclei"


class CropBoxSegmenter:
    """Fake prompted segmenter: the 'embedding' is the crop; each mask is the whole crop (``full=True``) or
    the
    prompt box rasterised in the crop's frame; records the crops it saw."""

    source = "fake"

    def __init__(self, full: bool):
        self.full = full
        self.crops: list[tuple[int, int]] = []

    def _embed(self, image):
        self.crops.append(image.shape[:2])
        return image.shape[:2]

    def _decode(self, embedding, prompts, image):
        h, w = embedding
        masks = np.zeros((len(prompts), h, w), bool)
        for k, (x0, y0, x1, y1) in enumerate(prompts.boxes):
            if self.full:
                masks[k] = True
            else:
                masks[k, int(y0) : int(y1), int(x0) : int(x1)] = True
        return Candidates(masks, scores=np.full(len(prompts), 0.9), source=self.source)


def rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_windows_at_borders_by_hand():
    z = ZoomSettings(context=4.0, min_crop=8, share=False)
    # 80 x 100 image (h x w): side 4 x 10 = 40
    assert crop_window(np.array([0, 0, 10, 10]), 80, 100, z) == (0, 0, 40, 40)  # top-left: shifted inside
    assert crop_window(np.array([90, 70, 100, 80]), 80, 100, z) == (60, 40, 100, 80)  # bottom-right
    assert crop_window(np.array([40, 30, 50, 40]), 80, 100, z) == (
        25,
        15,
        65,
        55,
    )  # centred: 45 - 20, 35 - 20
    # window larger than the image along y (200 > 80) and x (200 > 100): clipped to the image
    assert crop_window(np.array([10, 10, 60, 60]), 80, 100, z) == (0, 0, 100, 80)
    # a 2 px box gets min_crop
    assert crop_window(np.array([50, 50, 52, 52]), 80, 100, ZoomSettings(min_crop=20, share=False)) == (
        41,
        41,
        61,
        61,
    )


@pytest.mark.parametrize("full", [True, False])
def test_paste_back_at_input_resolution(full):
    h, w = 80, 100
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 10, 10], [90, 70, 100, 80], [40, 30, 50, 40], [10, 10, 60, 60]], np.float32)
    seg = CropBoxSegmenter(full)
    out = segment_zoomed(seg, img, Prompts(boxes=boxes), ZoomSettings(context=4.0, min_crop=8, share=False))
    assert out.masks.shape == (4, h, w)
    windows = [(0, 0, 40, 40), (60, 40, 100, 80), (25, 15, 65, 55), (0, 0, 100, 80)]
    assert [tuple(v) for v in out.extra["zoom_windows"]] == windows
    assert seg.crops == [(40, 40), (40, 40), (40, 40), (80, 100)]
    for k, (b, win) in enumerate(zip(boxes.astype(int), windows)):
        expected = rect(h, w, *win) if full else rect(h, w, *b)
        np.testing.assert_array_equal(out.masks[k], expected)
    np.testing.assert_allclose(out.scores, 0.9)


def test_box_margin_loosens_the_decoded_box_not_the_window():
    h, w = 80, 100
    img = np.zeros((h, w, 3), np.uint8)
    boxes = np.array([[40, 30, 50, 40], [0, 0, 10, 10]], np.float32)
    plain = segment_zoomed(
        CropBoxSegmenter(False), img, Prompts(boxes=boxes), ZoomSettings(min_crop=8, share=False)
    )
    seg = CropBoxSegmenter(False)
    z = ZoomSettings(min_crop=8, share=False, box_margin=2)
    out = segment_zoomed(seg, img, Prompts(boxes=boxes), z)
    np.testing.assert_array_equal(out.extra["zoom_windows"], plain.extra["zoom_windows"])  # same windows
    np.testing.assert_array_equal(out.masks[0], rect(h, w, 38, 28, 52, 42))  # the box grown by 2 px a side
    np.testing.assert_array_equal(out.masks[1], rect(h, w, 0, 0, 12, 12))  # clipped at the window's edge
    with pytest.raises(ConfigError, match="box_margin"):
        zoom_settings({"box_margin": -1})


def test_shared_windows():
    h, w = 200, 200
    img = np.zeros((h, w, 3), np.uint8)
    # 10 px boxes: the first's 40 px window (65..105) holds the second with 5 px of context on every side
    boxes = np.array([[80, 80, 90, 90], [90, 70, 100, 80], [10, 150, 20, 160]], np.float32)
    z = ZoomSettings(context=4.0, min_crop=8, share=True, share_margin=0.5)
    wins, assign = assign_windows(boxes.astype(np.float64), h, w, z)
    assert len(wins) == 2 and assign[0] == assign[1] != assign[2]
    seg = CropBoxSegmenter(full=False)
    out = segment_zoomed(seg, img, Prompts(boxes=boxes), z)
    for k, b in enumerate(boxes.astype(int)):
        np.testing.assert_array_equal(out.masks[k], rect(h, w, *b))
    assert len(seg.crops) == 2


def test_grid_windows_cover_the_image_and_boxes_take_the_most_central_one():
    h, w = 200, 230
    wins = grid_windows(h, w, 80)
    # stride 40, last row / column flush with the far border
    assert sorted({x0 for x0, _, _, _ in wins}) == [0, 40, 80, 120, 150]
    assert sorted({y0 for _, y0, _, _ in wins}) == [0, 40, 80, 120]
    assert all(x1 - x0 == 80 and y1 - y0 == 80 for x0, y0, x1, y1 in wins)
    # a 10 px box centred at (80, 80): the window 40..120 holds it with 35 px on every side; a 100 px box
    # (own window 400 > grid) keeps its own window
    boxes = np.array([[75, 75, 85, 85], [0, 0, 100, 100]], np.float64)
    z = ZoomSettings(context=4.0, min_crop=8, grid=80, grid_ratio=4.0, share_margin=1.0)
    wins, assign = assign_windows(boxes, h, w, z)
    assert len(wins) == 2 and wins[assign[0]] == (40, 40, 120, 120)
    assert wins[assign[1]] == crop_window(boxes[1], h, w, z)
    seg = CropBoxSegmenter(full=False)
    img = np.zeros((h, w, 3), np.uint8)
    out = segment_zoomed(seg, img, Prompts(boxes=boxes.astype(np.float32)), z)
    for k, b in enumerate(boxes.astype(int)):
        np.testing.assert_array_equal(out.masks[k], rect(h, w, *b))


def test_zoom_settings_checks():
    assert zoom_settings(None) is None and zoom_settings(False) is None
    assert zoom_settings(True) == ZoomSettings()
    assert zoom_settings({"context": 3}).context == 3
    with pytest.raises(ConfigError, match="unknown key"):
        zoom_settings({"contxt": 3})
    with pytest.raises(ConfigError, match="context"):
        zoom_settings({"context": 0.5})


@pytest.mark.skipif(not (DATA / "img2d.tif").is_file(), reason="../shared/data/nuclei not available")
def test_real_litemedsam_zoom_beats_whole_image():
    from lvlm.io import load_image, load_mask
    from lvlm.metrics import iou
    from lvlm.pipeline import load_config
    from lvlm.registry import build
    from lvlm.types import masks_to_boxes

    image = load_image(DATA / "img2d.tif")
    labels = load_mask(DATA / "mask2d.tif", instance=True)
    ids = np.unique(labels)[1:][::25][:5]  # 5 nuclei spread over the image
    gt = labels[None] == ids[:, None, None]
    boxes = masks_to_boxes(gt)
    seg = build("segmenter", "litemedsam", device="cpu")
    whole = seg.segment(image, Prompts(boxes=boxes)).masks
    spec = dict(load_config("sam/litemedsam_box_zoom")["segmenter"], device="cpu")  # zoom through the config
    zoom_seg = build("segmenter", spec.pop("name"), **spec)
    zoomed = zoom_seg.segment(image, Prompts(boxes=boxes)).masks
    iou_whole = float(np.mean(iou(whole, gt)))
    iou_zoom = float(np.mean(iou(zoomed, gt)))
    assert iou_zoom > iou_whole + 0.05, (iou_zoom, iou_whole)
    with pytest.raises(ConfigError, match="grid"):
        zoom_settings({"grid": -1})
