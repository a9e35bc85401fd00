"""Metrics against independent references (pycocotools IoU, scipy boundaries) and their empty-mask conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lvlm.bench import metrics as M


def _random_masks(n=6, h=40, w=52, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.random((n, h, w))
    return np.stack([ndimage.gaussian_filter(x, 3) > np.median(ndimage.gaussian_filter(x, 3)) + 0.01 * i
                     for i, x in enumerate(noise)])


def test_iou_matches_pycocotools_and_dice_precision_recall_match_counts():
    mask_utils = pytest.importorskip("pycocotools.mask")
    pred, gt = _random_masks(seed=1), _random_masks(seed=2)
    ours = M.iou(pred, gt)
    enc = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    ref = np.array([mask_utils.iou([enc(p)], [enc(g)], [0])[0, 0] for p, g in zip(pred, gt)])
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    tp = (pred & gt).sum((1, 2))
    np.testing.assert_allclose(M.dice(pred, gt), 2 * tp / (pred.sum((1, 2)) + gt.sum((1, 2))))
    np.testing.assert_allclose(M.precision(pred, gt), tp / pred.sum((1, 2)))
    np.testing.assert_allclose(M.recall(pred, gt), tp / gt.sum((1, 2)))
    c = M.confusion(pred, gt)
    assert (c["tp"] + c["fp"] + c["fn"] + c["tn"] == 40 * 52).all() and (c["tp"] == tp).all()


def _ref_boundary(m):
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=1)


def _ref_boundary_scores(p, g, tol):
    bp, bg = _ref_boundary(p), _ref_boundary(g)
    dist_to_g = ndimage.distance_transform_edt(~bg) if bg.any() else np.full(p.shape, np.inf)
    dist_to_p = ndimage.distance_transform_edt(~bp) if bp.any() else np.full(p.shape, np.inf)
    prec = (dist_to_g[bp] <= tol).mean() if bp.any() else float(not bg.any())
    rec = (dist_to_p[bg] <= tol).mean() if bg.any() else float(not bp.any())
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return prec, rec, f1


@pytest.mark.parametrize("tol", [0, 1, 2, 3.5])
def test_boundary_scores_match_a_scipy_distance_transform_reference(tol):
    pred, gt = _random_masks(seed=3), _random_masks(seed=4)
    pred[0] = np.roll(gt[0], 2, axis=1)  # a shifted copy: perfect within 2 px
    ours = M.boundary_scores(pred, gt, tolerance=tol)
    for i in range(len(pred)):
        ref = _ref_boundary_scores(pred[i], gt[i], tol)
        assert ours["precision"][i] == pytest.approx(ref[0], abs=1e-12)
        assert ours["recall"][i] == pytest.approx(ref[1], abs=1e-12)
        assert ours["f1"][i] == pytest.approx(ref[2], abs=1e-12)
    assert np.array_equal(M.boundary(gt), np.stack([_ref_boundary(g) for g in gt]))


def test_boundary_tolerance_on_a_shifted_square():
    gt = np.zeros((30, 30), bool)
    gt[10:20, 10:20] = True
    pred = np.roll(gt, 1, axis=1)
    assert M.boundary_scores(pred, gt, tolerance=1)["f1"] == 1.0
    assert M.boundary_scores(pred, gt, tolerance=0)["f1"] < 1.0
    assert M.boundary_scores(gt, gt, tolerance=0)["f1"] == 1.0


def test_empty_mask_conventions():
    h, w = 8, 9
    empty, full = np.zeros((h, w), bool), np.ones((h, w), bool)
    some = empty.copy()
    some[2:5, 3:6] = True
    both_empty = M.segmentation_metrics(empty, empty)
    assert all(both_empty[k] == 1.0 for k in M.METRICS)  # a correct "nothing here"
    missed = M.segmentation_metrics(empty, some)  # predicted nothing, object present
    assert all(missed[k] == 0.0 for k in M.METRICS)
    false_alarm = M.segmentation_metrics(some, empty)  # predicted something, truth empty
    assert all(false_alarm[k] == 0.0 for k in M.METRICS)
    whole = M.segmentation_metrics(full, full)  # no boundary on either side (the frame is not a boundary)
    assert all(whole[k] == 1.0 for k in M.METRICS)
    assert M.boundary(full).sum() == 0 and M.boundary(some).sum() == 8


def test_types_batches_and_torch_device_agnostic():
    pred, gt = _random_masks(seed=5), _random_masks(seed=6)
    a = M.segmentation_metrics(pred, gt)
    t = M.segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
    assert isinstance(a["iou"], np.ndarray) and isinstance(t["iou"], torch.Tensor)
    for k in M.METRICS:
        np.testing.assert_allclose(a[k], t[k].numpy())
    single = M.segmentation_metrics(pred[0], gt[0])
    assert isinstance(single["iou"], float) and single["iou"] == pytest.approx(a["iou"][0])
    assert single["pred_area"] == int(pred[0].sum())
    with pytest.raises(ValueError, match="differ in shape"):
        M.iou(pred, gt[:, :-1])


def test_summarize_per_group():
    rows = [{"iou": 0.2, "tags": {"difficulty": "easy"}}, {"iou": 0.4, "tags": {"difficulty": "easy"}},
            {"iou": 1.0, "tags": {"difficulty": "hard"}}, {"iou": None, "tags": {"difficulty": "hard"}}]
    s = M.summarize(rows, ["iou"], by="tags.difficulty")
    assert s["easy"]["iou_mean"] == pytest.approx(0.3) and s["easy"]["iou_std"] == pytest.approx(0.1)
    assert s["hard"]["n"] == 1  # rows without a value (errors) are not averaged in
    assert M.summarize(rows, ["iou"])["all"]["n"] == 3
