"""SAM 2: our generator / segmenter against direct calls of the sam2 package on a tiny random SAM 2.1."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from lvlm.errors import ConfigError, WeightsError, WeightsNotFoundError
from lvlm.models.sam2 import URL_BASE, VARIANTS, build_sam2_model
from lvlm.pipeline import Pipeline, load_config
from lvlm.registry import build
from lvlm.types import Prompts

# knobs that let many of the random model's masks through the IoU and stability filters; the random
# model's masks span the image, so box NMS at 0.7 keeps one of them and NMS at 1.0 keeps them all
AMG_KNOBS = {
    "points_per_side": 8,
    "points_per_batch": 24,
    "pred_iou_thresh": 0.5,
    "stability_score_thresh": 0.55,
    "stability_score_offset": 0.01,
    "box_nms_thresh": 1.0,
}
BOXES = np.array([[3, 4, 30, 25], [20, 10, 41, 31], [0, 0, 64, 48]], np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from threads, and on a busy machine a second one costs several times the
    CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return build_sam2_model("tiny_random", device="cpu")


def _reference_predictor(model):
    """sam2's own predictor; it assumes a 1024 px model, so its feature sizes are set for the 256 px one."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pred = SAM2ImagePredictor(model)
    s = model.image_size
    pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return pred


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """N x M IoU of two stacks of bool masks."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / np.maximum(union, 1)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"box_nms_thresh": 0.7, "crop_n_layers": 1, "points_per_side": 4},
        {"box_nms_thresh": 0.7, "use_m2m": True, "points_per_side": 4},
    ],
)
def test_generator_matches_official_amg(model, rgb_image, extra):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    knobs = {**AMG_KNOBS, **extra}
    ours = build("generator", "sam2", model=model, device="cpu", **knobs).generate(rgb_image)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        amg = SAM2AutomaticMaskGenerator(model, **knobs)
    s = model.image_size
    amg.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    ref = amg.generate(rgb_image)

    if not extra:
        assert len(ref) >= 20, "the reference should keep many masks for this comparison to mean something"
    assert len(ours) == len(ref) > 0
    ref_masks = np.stack([r["segmentation"] for r in ref])
    assert ours.masks.shape == ref_masks.shape and ours.masks.dtype == bool
    np.testing.assert_array_equal(_iou(ours.masks, ref_masks).max(1), 1.0)
    np.testing.assert_array_equal(ours.masks, ref_masks)  # same masks in the same order
    best = np.arange(len(ref))
    np.testing.assert_allclose(ours.scores, [ref[j]["predicted_iou"] for j in best], rtol=1e-6)
    np.testing.assert_allclose(ours.stability, [ref[j]["stability_score"] for j in best], rtol=1e-6)
    # sam2 boxes are xywh with inclusive max pixel; ours are xyxy with exclusive right/bottom edges
    ref_xyxy = np.array([[x, y, x + w + 1, y + h + 1] for x, y, w, h in (ref[j]["bbox"] for j in best)])
    np.testing.assert_array_equal(ours.boxes, ref_xyxy)
    np.testing.assert_array_equal(ours.extra["crop_boxes"], [r["crop_box"] for r in ref])
    np.testing.assert_array_equal(ours.extra["point_coords"], [r["point_coords"][0] for r in ref])
    assert ours.source == "sam2"


def test_min_mask_region_area_removes_small_islands(model, rgb_image):
    from scipy import ndimage

    pytest.importorskip("cv2")
    area = 25
    raw = build("generator", "sam2", model=model, device="cpu", **AMG_KNOBS).generate(rgb_image)
    clean = build(
        "generator", "sam2", model=model, device="cpu", **AMG_KNOBS, min_mask_region_area=area
    ).generate(rgb_image)
    assert 0 < len(clean) <= len(raw)
    small_before = small_after = 0
    for masks, count in ((raw.masks, "before"), (clean.masks, "after")):
        for m in masks:
            labels, n = ndimage.label(m, structure=np.ones((3, 3)))
            sizes = np.bincount(labels.ravel())[1:]
            small = int((sizes < area).sum()) if n > 1 else 0  # a lone small region is kept
            if count == "before":
                small_before += small
            else:
                small_after += small
    assert small_before > 0 and small_after == 0


@pytest.mark.parametrize("multimask", [True, False])
def test_prompted_boxes_in_one_call_equal_per_box_predictor(model, rgb_image, multimask):
    seg = build("segmenter", "sam2", model=model, device="cpu", multimask_output=multimask)
    out = seg.segment(rgb_image, Prompts(boxes=BOXES))
    assert out.masks.shape == (3, *rgb_image.shape[:2])

    ref = _reference_predictor(model)
    ref.set_image(rgb_image)
    for k, box in enumerate(BOXES):
        masks, ious, _ = ref.predict(box=box, multimask_output=multimask)
        j = int(np.argmax(ious))
        assert _iou(out.masks[k : k + 1], masks[j : j + 1].astype(bool))[0, 0] >= 0.999
        assert np.mean(out.masks[k] != masks[j]) < 1e-3  # at most a pixel or two at the threshold
        np.testing.assert_allclose(out.scores[k], ious[j], atol=1e-5)


def test_prompted_point_sets_equal_per_prompt_predictor(model, rgb_image):
    points = np.array([[[25, 20], [5, 5]], [[50, 40], [30, 20]]], np.float32)  # 2 prompts of 2 points
    labels = np.array([[1, 0], [1, 1]])
    seg = build("segmenter", "sam2", model=model, device="cpu")
    out = seg.segment(rgb_image, Prompts(points=points, point_labels=labels))
    ref = _reference_predictor(model)
    ref.set_image(rgb_image)
    for k in range(2):
        masks, ious, _ = ref.predict(point_coords=points[k], point_labels=labels[k], multimask_output=True)
        j = int(np.argmax(ious))
        assert _iou(out.masks[k : k + 1], masks[j : j + 1].astype(bool))[0, 0] >= 0.999


def test_masks_at_input_resolution_for_odd_sized_image(model):
    img = np.random.default_rng(1).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    cands = build("generator", "sam2", model=model, device="cpu", **AMG_KNOBS).generate(img)
    assert len(cands) > 0 and cands.masks.shape[1:] == (37, 53)
    assert (cands.boxes[:, [0, 2]] <= 53).all() and (cands.boxes[:, [1, 3]] <= 37).all()
    seg = build("segmenter", "sam2", model=model, device="cpu")
    out = seg.segment(img, Prompts(boxes=[[2, 3, 30, 20], [10, 10, 60, 40]]))  # 2nd box clipped to the image
    assert out.masks.shape == (2, 37, 53) and out.masks.dtype == bool


def test_packaged_box_config_runs_with_tiny_model(rgb_image):
    cfg = load_config("sam2/sam2_box")
    cfg["segmenter"] = {**cfg["segmenter"], "variant": "tiny_random", "device": "cpu"}
    pipe = Pipeline.from_config(cfg)
    res = pipe(rgb_image, box=BOXES[:2])
    assert res.mask.shape == rgb_image.shape[:2] and len(res.candidates) == 2


@pytest.mark.parametrize("variant", ["tiny", "large"])
def test_missing_official_weights_fail_fast(variant):
    filename = VARIANTS[variant][1]
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        build("segmenter", "sam2", variant=variant, device="cpu")
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert filename in msg and f"{URL_BASE}/{filename}" in msg and "lvlm_home" in msg


def test_missing_checkpoint_path_names_file_and_url(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="sam2.1_hiera_small.pt") as err:
        build_sam2_model("small", checkpoint=tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value) and URL_BASE in str(err.value)


@pytest.mark.parametrize("knob", [{"points_per_side": 0}, {"pred_iou_thresh": 1.5}, {"crop_n_layers": -1}])
def test_bad_generator_knobs_are_config_errors(knob):
    with pytest.raises(ConfigError, match=next(iter(knob))):
        build("generator", "sam2", variant="tiny_random", device="cpu", **knob)


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        build("generator", "sam2", variant="huge", device="cpu")
    for name in ("tiny", "small", "base_plus", "large", "tiny_random"):
        assert name in str(err.value)


def test_checkpoint_file_round_trip_and_mismatch(model, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)  # the official files' layout
    loaded = build_sam2_model("tiny_random", checkpoint=path, seed=123)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(WeightsError, match="SAM 2.1 tiny checkpoint .*wrong shape.*check the variant"):
        build_sam2_model("tiny", checkpoint=path)


def test_random_init_is_seeded_and_leaves_global_rng(model):
    state = torch.random.get_rng_state()
    again = build_sam2_model("tiny_random", checkpoint="random")
    assert torch.equal(torch.random.get_rng_state(), state)
    w0 = next(iter(model.state_dict().values()))
    assert torch.equal(w0, next(iter(again.state_dict().values())))
