"""``sam_fast`` against segment_anything's own SamAutomaticMaskGenerator on the same model and image.

The model is the tiny random SAM (``vit_tiny``) with :func:`point_local_sam` weights, so that a point gives
nested blobs around it and the official generator keeps tens of masks (a purely random decoder gives one mask
after NMS); see docs/performance.md. The criterion asked of the generator is: same count within 2% and mean
best-match IoU >= 0.99 both ways. With the official point batch size the masks are also bit-identical.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.amg import remove_small_regions

from lvlm.errors import ConfigError, WeightsNotFoundError
from lvlm.generators.amg_utils import (
    boxes_from_projections,
    label_components,
    remove_small_regions_batched,
)
from lvlm.generators.sam_fast import SamFastGenerator
from lvlm.models.mask_decoding import sam_postprocess_masks
from lvlm.models.sam import build_sam
from lvlm.registry import available, build
from lvlm.testing import point_local_sam
from lvlm.types import masks_to_boxes

CASES = {  # name: (official generator settings, the fewest masks the official generator must keep)
    "default": ({}, 10),
    "thresholds_0": ({"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}, 40),
    "crops": ({"crop_n_layers": 1}, 15),
    "small_regions": ({"min_mask_region_area": 150}, 10),
    "many": (
        {
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "box_nms_thresh": 0.95,
            "min_mask_region_area": 150,
        },
        90,
    ),
}


def scene(h: int = 96, w: int = 128, n: int = 8, seed: int = 0) -> np.ndarray:
    """Coloured discs on grey: an image the point-local model segments into tens of distinct masks."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 128, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(6, 20)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img


@functools.cache
def tiny_model() -> Sam:
    return point_local_sam(build_sam("vit_tiny", None, device="cpu"), seed=0)


@functools.cache
def official(name: str) -> list[dict]:
    kw = {"points_per_side": 8, **CASES[name][0]}
    return SamAutomaticMaskGenerator(tiny_model(), **kw).generate(scene())


def stack(records: list[dict], shape) -> np.ndarray:
    return np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *shape), bool)


def best_match_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the masks of ``a`` of their best IoU with a mask of ``b``."""
    if len(a) == 0 or len(b) == 0:
        return float(len(a) == len(b))
    fa = torch.as_tensor(a).flatten(1).double()
    fb = torch.as_tensor(b).flatten(1).double()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return float(iou.max(1).values.mean())


def assert_same_set(ours: np.ndarray, ref: np.ndarray) -> None:
    assert abs(len(ours) - len(ref)) <= 0.02 * len(ref), (len(ours), len(ref))
    assert best_match_iou(ours, ref) >= 0.99
    assert best_match_iou(ref, ours) >= 0.99


@pytest.mark.parametrize("name", list(CASES))
def test_same_masks_as_official(name):
    kw, fewest = CASES[name]
    img = scene()
    ref = official(name)
    assert len(ref) >= fewest  # the comparison is about a real number of masks
    gen = SamFastGenerator(model=tiny_model(), device="cpu", points_per_side=8, points_per_batch=64, **kw)
    cands = gen.generate(img)
    ref_masks = stack(ref, img.shape[:2])
    assert_same_set(cands.masks, ref_masks)
    # with the official batch size nothing differs at all: same masks, same order, same scores
    assert np.array_equal(cands.masks, ref_masks)
    np.testing.assert_allclose(cands.scores, [r["predicted_iou"] for r in ref], rtol=0, atol=1e-6)
    np.testing.assert_allclose(cands.stability, [r["stability_score"] for r in ref], rtol=0, atol=1e-6)
    np.testing.assert_allclose(cands.extra["point_coords"], [r["point_coords"][0] for r in ref], atol=1e-4)
    np.testing.assert_array_equal(cands.extra["crop_boxes"], [r["crop_box"] for r in ref])
    np.testing.assert_array_equal(cands.boxes, masks_to_boxes(cands.masks))  # exclusive right / bottom edges
    assert cands.source == "sam_fast"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["thresholds_0", "crops", "many"])
def test_same_masks_as_official_on_gpu(name):
    """On a GPU both generators run on the GPU (the official one's NMS and cleaning partly on the CPU)."""
    kw, fewest = CASES[name]
    model = point_local_sam(build_sam("vit_tiny", None, device="cuda"), seed=0)
    img = scene()
    ref = stack(SamAutomaticMaskGenerator(model, points_per_side=8, **kw).generate(img), img.shape[:2])
    assert len(ref) >= fewest
    ours = SamFastGenerator(model=model, device="cuda", points_per_side=8, **kw).generate(img)
    assert_same_set(ours.masks, ref)


def test_small_regions_case_changes_masks():
    """The min_mask_region_area case exercises the post-processing: some masks change, some go."""
    with_pp, without = official("small_regions"), official("default")
    masks_pp, masks = stack(with_pp, scene().shape[:2]), stack(without, scene().shape[:2])
    changed = sum(
        remove_small_regions(m, 150, "holes")[1] or remove_small_regions(m, 150, "islands")[1] for m in masks
    )
    assert changed >= 1
    assert not (len(masks_pp) == len(masks) and np.array_equal(masks_pp, masks))


def test_large_batches_same_masks():
    """Default (large) point batches and crop batches through the encoder: the required criterion holds."""
    img = scene()
    ref = stack(official("crops"), img.shape[:2])
    gen = SamFastGenerator(
        model=tiny_model(),
        device="cpu",
        points_per_side=8,
        crop_n_layers=1,
        points_per_batch=256,
        encoder_batch_size=5,
    )
    assert_same_set(gen.generate(img).masks, ref)
    assert set(gen.last_timings) >= {"encoder", "decoder", "masks", "small_regions", "total"}


def test_crops_without_masks():
    """Crops that keep no mask beside crops that keep some; and no mask in any crop, where segment_anything's
    own generator raises IndexError (its empty crop_boxes tensor has no box axis) and this one returns
    none."""
    img = scene()
    kw = {"points_per_side": 6, "crop_n_layers": 1, "pred_iou_thresh": 0.9, "stability_score_thresh": 0.0}
    ref = stack(SamAutomaticMaskGenerator(tiny_model(), **kw).generate(img), img.shape[:2])
    cands = SamFastGenerator(model=tiny_model(), device="cpu", points_per_batch=64, **kw).generate(img)
    assert len(ref) > 0 and np.array_equal(cands.masks, ref)
    kw["pred_iou_thresh"] = 0.95
    with pytest.raises(IndexError):
        SamAutomaticMaskGenerator(tiny_model(), **kw).generate(img)
    none = SamFastGenerator(model=tiny_model(), device="cpu", **kw).generate(img)
    assert len(none) == 0 and none.shape == img.shape[:2]


def test_records_like_official():
    ref = official("crops")
    ours = SamFastGenerator(
        model=tiny_model(), device="cpu", points_per_side=8, points_per_batch=64, crop_n_layers=1
    ).generate_records(scene())
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a["area"] == b["area"] and a["bbox"] == b["bbox"] and a["crop_box"] == b["crop_box"]
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-6)
        assert a["point_coords"][0] == pytest.approx(b["point_coords"][0])


def test_rle_output_mode_like_official():
    gen = SamFastGenerator(
        model=tiny_model(),
        device="cpu",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_mode="uncompressed_rle",
    )
    recs = gen.generate_records(scene())
    assert recs
    ref = SamAutomaticMaskGenerator(
        tiny_model(),
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        output_mode="uncompressed_rle",
    ).generate(scene())
    assert [r["segmentation"] for r in recs] == [r["segmentation"] for r in ref]


def test_generate_batch_matches_single_images():
    imgs = [scene(seed=0), scene(80, 100, seed=3)]
    gen = SamFastGenerator(
        model=tiny_model(), device="cpu", points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    both = gen.generate_batch(imgs)
    single = SamFastGenerator(
        model=tiny_model(), device="cpu", points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    for img, c in zip(imgs, both):
        assert c.shape == img.shape[:2]
        assert_same_set(c.masks, single.generate(img).masks)
    assert gen.generate(imgs[1]) is both[1]  # cached


def test_bf16_encoder_close_to_fp32():
    img = scene()
    kw = {
        "model": tiny_model(),
        "device": "cpu",
        "points_per_side": 6,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    fp32 = SamFastGenerator(**kw).generate(img)
    bf16 = SamFastGenerator(bf16=True, **kw).generate(img)
    assert len(bf16) >= 0.8 * len(fp32)
    assert best_match_iou(bf16.masks, fp32.masks) >= 0.9


def smooth_masks(n: int, h: int, w: int, cell: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, max(2, h // cell), max(2, w // cell), generator=g)
    m = torch.nn.functional.interpolate(x, (h, w), mode="bilinear")[:, 0] > 0.3
    m[0] = False  # empty
    m[1] = True  # full
    return m


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_remove_small_regions_like_cv2(backend):
    masks = smooth_masks(40, 45, 61, 4, seed=1)
    ones = torch.zeros(3, 45, 61, dtype=torch.bool)  # every island small: the largest one stays
    ones[:, 2:6, 2:6] = True
    ones[:, 30:33, 40:43] = True
    ones[1, 10, 10] = True
    ones[2, 40:44, 50:56] = True
    masks = torch.cat([masks, ones])
    for area in (5, 30, 200):
        new, changed = remove_small_regions_batched(masks, area, backend=backend, chunk_pixels=10 * 45 * 61)
        for i, m in enumerate(masks.numpy()):
            ref, ch1 = remove_small_regions(m, area, "holes")
            ref, ch2 = remove_small_regions(ref, area, "islands")
            assert np.array_equal(new[i].numpy(), ref), (area, i)
            assert bool(changed[i]) == (ch1 or ch2), (area, i)


def test_label_components_partition_like_scipy():
    from scipy import ndimage

    masks = smooth_masks(6, 70, 50, 5, seed=2)
    masks[2, ::2] = False  # stripes: many components
    masks[3] = torch.as_tensor(
        np.indices((70, 50)).sum(0) % 2 == 0
    )  # checkerboard: one 8-connected component
    labels = label_components(masks)
    for m, lab in zip(masks.numpy(), labels.numpy()):
        ref, n = ndimage.label(m, structure=np.ones((3, 3)))
        ours = lab[m]
        assert len(np.unique(ours)) == n
        pairs = np.unique(np.stack([ours, ref[m]]), axis=1)  # a bijection between the two labellings
        assert pairs.shape[1] == n


def test_postprocess_masks_bit_identical():
    model = tiny_model()
    g = torch.Generator().manual_seed(4)
    low = torch.randn(5, 1, 64, 64, generator=g) * 10
    for input_size, orig in [
        ((192, 256), (96, 128)),
        ((256, 171), (300, 200)),
        ((37, 256), (30, 207)),
        ((256, 256), (64, 64)),
    ]:
        ref = model.postprocess_masks(low, input_size, orig)
        assert torch.equal(sam_postprocess_masks(low, 256, input_size, orig), ref)


def test_registered_and_config_errors():
    assert "sam_fast" in available("generator")
    gen = build(
        "generator",
        "sam_fast",
        model_type="vit_tiny",
        checkpoint=None,
        device="cpu",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    cands = gen.generate(scene(40, 50))
    assert cands.shape == (40, 50) and cands.source == "sam_fast:vit_tiny"
    with pytest.raises(ConfigError, match="pred_iou_thresh"):
        SamFastGenerator(model=tiny_model(), pred_iou_thresh=1.5)
    with pytest.raises(ConfigError, match="points_per_side"):
        SamFastGenerator(model=tiny_model(), points_per_side=0)
    with pytest.raises(ConfigError, match="exactly one"):
        SamFastGenerator(model=tiny_model(), points_per_side=None)
    with pytest.raises(ConfigError, match="output_mode"):
        SamFastGenerator(model=tiny_model(), output_mode="png")
    with pytest.raises(ConfigError, match="unknown config key"):
        build("generator", "sam_fast", model_type="vit_tiny", checkpoint=None, points=4)


def test_missing_weights_fail_fast():
    with pytest.raises(WeightsNotFoundError, match="sam_vit_b_01ec64.pth"):
        SamFastGenerator(model_type="vit_b", device="cpu")


def test_boxes_from_projections_like_official():
    from segment_anything.utils.amg import batched_mask_to_box

    masks = smooth_masks(9, 33, 47, 4, seed=5)
    masks[2] = False
    masks[2, 5, 7] = True  # one pixel
    assert torch.equal(boxes_from_projections(masks.any(-1), masks.any(-2)), batched_mask_to_box(masks))


# ---------------------------------------------------------------------------------------------- SAM 2
SAM2_ZERO = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
SAM2_CASES = {  # the random tiny SAM 2's masks all overlap: box NMS off (1.0) keeps every mask to compare
    "default": {},
    "all_masks": SAM2_ZERO,
    "crops": {**SAM2_ZERO, "crop_n_layers": 1, "crop_nms_thresh": 1.0},
    "m2m": {**SAM2_ZERO, "use_m2m": True},
    "low_res_cleaning": {**SAM2_ZERO, "min_mask_region_area": 300},
}


def scipy_connected_components(mask):
    """What sam2's compiled ``_C.get_connected_componnets`` returns (8-connectivity), for CPU-only
    installs."""
    from scipy import ndimage

    m = mask.cpu().numpy()[:, 0].astype(bool)
    labels = np.zeros(m.shape, np.int32)
    counts = np.zeros(m.shape, np.int32)
    for i, mi in enumerate(m):
        lab, _ = ndimage.label(mi, structure=np.ones((3, 3)))
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        labels[i], counts[i] = lab, sizes[lab]
    return torch.from_numpy(labels)[:, None], torch.from_numpy(counts)[:, None]


@functools.cache
def tiny_sam2():
    pytest.importorskip("sam2")
    from lvlm.models.sam2 import build_sam2_model

    return build_sam2_model("tiny_random", device="cpu")


@pytest.mark.parametrize("name", list(SAM2_CASES))
def test_sam2_same_masks_as_official(name, monkeypatch):
    model = tiny_sam2()
    import sam2.utils.misc
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from lvlm.generators.sam2_fast import Sam2FastGenerator
    from lvlm.models.sam2 import fit_feature_sizes

    # the official low-res cleaning needs sam2's CUDA extension; give it the same computation on the CPU
    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", scipy_connected_components)
    kw = {"points_per_side": 6, **SAM2_CASES[name]}
    img = scene()
    with warnings.catch_warnings():  # torch.jit.script deprecation inside sam2's transforms
        warnings.simplefilter("ignore", FutureWarning)
        amg = SAM2AutomaticMaskGenerator(model, **kw)
    fit_feature_sizes(amg.predictor)
    ref = amg.generate(img)
    ours = Sam2FastGenerator(model=model, device="cpu", points_per_batch=64, **kw).generate(img)
    ref_masks = stack(ref, img.shape[:2])
    assert len(ref) >= (0 if name == "default" else 100)
    assert_same_set(ours.masks, ref_masks)
    assert np.array_equal(ours.masks, ref_masks)
    np.testing.assert_allclose(ours.scores, [r["predicted_iou"] for r in ref], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        ours.extra["point_coords"], np.reshape([r["point_coords"][0] for r in ref], (-1, 2)), atol=1e-4
    )
    if name == "low_res_cleaning":  # the cleaning did something
        plain = Sam2FastGenerator(model=model, device="cpu", **{**kw, "min_mask_region_area": 0}).generate(
            img
        )
        assert not np.array_equal(plain.masks, ours.masks)


def test_sam2_fast_registered():
    pytest.importorskip("sam2")
    assert "sam2_fast" in available("generator")
    gen = build(
        "generator",
        "sam2_fast",
        variant="tiny_random",
        device="cpu",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert gen.generate(scene(40, 50)).source == "sam2_fast:tiny_random"


# ------------------------------------------------------------------------------------ shared settings
AMG_GENERATORS = ["sam", "mobilesam", "litemedsam", "sam_fast", "sam2", "sam2_fast"]


@pytest.mark.parametrize("name", AMG_GENERATORS)
@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        (
            "points_per_side",
            True,
            "expected a positive integer",
        ),  # a bool is not an integer, in every generator
        ("points_per_batch", 0, "expected a positive integer"),
        ("crop_n_layers", -1, "expected an integer >= 0"),
        ("min_mask_region_area", False, "expected an integer >= 0"),
        ("pred_iou_thresh", 1.5, r"expected a number in \[0, 1\]"),
        ("crop_overlap_ratio", True, r"expected a number in \[0, 1\]"),
        ("stability_score_offset", -1, "expected a number >= 0"),
    ],
)
def test_amg_knobs_fail_alike_in_every_generator(name, key, value, expect):
    """One rule per knob (lvlm.generators.amg_settings), checked before any model is built."""
    with pytest.raises(ConfigError, match=f"{key}={value!r}: {expect}"):
        build("generator", name, checkpoint=None, device="cpu", **{key: value})


def test_amg_settings_point_grids_and_official_keys():
    from segment_anything import SamAutomaticMaskGenerator

    from lvlm.generators.amg_settings import AmgSettings

    with pytest.raises(ConfigError, match="exactly one of points_per_side and point_grids"):
        AmgSettings(points_per_side=None).validate()
    with pytest.raises(ConfigError, match="crop_n_layers=1 needs 2"):
        AmgSettings(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1).validate()
    st = AmgSettings(points_per_side=np.int64(8), pred_iou_thresh=1).validate()
    assert type(st.points_per_side) is int and type(st.pred_iou_thresh) is float
    official = SamAutomaticMaskGenerator(tiny_model(), **st.kwargs())  # the names are segment_anything's
    assert official.pred_iou_thresh == 1.0 and official.point_grids[0].shape == (64, 2)


def test_generator_cache_is_the_base_classes():
    """MaskGenerator.generate / generate_batch keep the last images' candidates: one _generate per new
    image."""
    from lvlm.components import MaskGenerator
    from lvlm.types import Candidates

    class Counting(MaskGenerator):
        def __init__(self):
            self.seen = []

        def _generate(self, image):
            self.seen.append(int(image[0, 0, 0]))
            return Candidates.empty(*image.shape[:2])

    imgs = [np.full((8, 9, 3), v, np.uint8) for v in range(4)]
    gen = Counting()
    a = gen.generate(imgs[0])
    assert gen.generate(imgs[0].copy()) is a and gen.seen == [0]  # keyed by content, not identity
    out = gen.generate_batch([imgs[1], imgs[0], imgs[1], imgs[2]])
    assert gen.seen == [0, 1, 2] and out[0] is out[2] and out[1] is a
    gen.generate(imgs[3])  # cache_size 2: the least recently used go (here 0 and 1)
    gen.generate(imgs[2])
    assert gen.seen == [0, 1, 2, 3]
    gen.generate(imgs[0])
    assert gen.seen == [0, 1, 2, 3, 0]
    gen.clear_cache()
    gen.generate(imgs[0])
    assert gen.seen == [0, 1, 2, 3, 0, 0]
