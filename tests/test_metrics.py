"""Metrics against independent references (pycocotools IoU, scipy boundaries) and their empty-mask
conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lvlm import metrics as M


def _random_masks(n=6, h=40, w=52, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.random((n, h, w))
    return np.stack(
        [
            ndimage.gaussian_filter(x, 3) > np.median(ndimage.gaussian_filter(x, 3)) + 0.01 * i
            for i, x in enumerate(noise)
        ]
    )


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
    rows = [
        {"iou": 0.2, "tags": {"difficulty": "easy"}},
        {"iou": 0.4, "tags": {"difficulty": "easy"}},
        {"iou": 1.0, "tags": {"difficulty": "hard"}},
        {"iou": None, "tags": {"difficulty": "hard"}},
    ]
    from lvlm.bench.metrics import summarize

    s = summarize(rows, ["iou"], by="tags.difficulty")
    assert s["easy"]["iou_mean"] == pytest.approx(0.3) and s["easy"]["iou_std"] == pytest.approx(0.1)
    assert s["hard"]["n"] == 1  # rows without a value (errors) are not averaged in
    assert summarize(rows, ["iou"])["all"]["n"] == 3


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_oracle_iou_and_selection_efficiency_on_a_hand_made_case():
    gt = _box(20, 20, 0, 10, 0, 10)  # 100 px
    cands = np.stack(
        [
            _box(20, 20, 0, 10, 0, 5),  # IoU 50 / 100 = 0.5
            _box(20, 20, 0, 10, 0, 8),  # IoU 80 / 100 = 0.8, the best
            _box(20, 20, 10, 20, 10, 20),
        ]
    )  # IoU 0
    assert M.oracle_iou(cands, gt) == pytest.approx(0.8)
    assert M.oracle_iou(torch.from_numpy(cands), torch.from_numpy(gt)) == pytest.approx(0.8)
    assert M.selection_efficiency(0.5, M.oracle_iou(cands, gt)) == pytest.approx(0.625)
    assert M.oracle_iou(np.zeros((0, 20, 20), bool), gt) == 0.0  # no candidate
    assert np.isnan(M.selection_efficiency(0.0, 0.0))
    np.testing.assert_allclose(M.pairwise_iou(cands, gt[None])[:, 0], [0.5, 0.8, 0.0])


def test_match_instances_on_a_hand_made_case():
    h = w = 30
    gts = np.stack([_box(h, w, 0, 10, 0, 10), _box(h, w, 0, 10, 20, 30), _box(h, w, 20, 30, 0, 10)])
    preds = np.stack(
        [
            _box(h, w, 0, 10, 0, 10),  # gt 0, IoU 1
            _box(h, w, 0, 10, 20, 26),  # gt 1, IoU 0.6
            _box(h, w, 20, 30, 0, 4),  # gt 2, IoU 0.4: not a match at 0.5
            _box(h, w, 12, 18, 12, 18),
        ]
    )  # nothing
    r = M.match_instances(preds, gts, iou=0.5)
    assert (r["tp"], r["n_pred"], r["n_gt"]) == (2, 4, 3)
    assert r["f1"] == pytest.approx(2 * 2 / 7)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(2 / 3)
    assert r["matched_iou"] == pytest.approx(0.8)
    assert r["best_iou"] == pytest.approx((1 + 0.6 + 0.4) / 3)
    assert M.match_instances(preds, gts, iou=0.3)["tp"] == 3
    empty = np.zeros((0, h, w), bool)
    assert M.match_instances(empty, empty)["f1"] == 1.0
    none = M.match_instances(empty, gts)
    assert none["f1"] == 0.0 and none["best_iou"] == 0.0 and np.isnan(none["matched_iou"])


def test_coco_mask_ap_on_a_hand_made_set():
    pytest.importorskip("pycocotools")
    h = w = 40
    gts = np.stack([_box(h, w, 0, 10, 0, 10), _box(h, w, 20, 30, 20, 30)])
    p_hit = _box(h, w, 0, 10, 0, 10)  # IoU 1 with gt 0
    p_fp = _box(h, w, 12, 18, 30, 36)  # no object
    p_part = np.zeros((h, w), bool)
    p_part[20:30, 20:30] = True
    p_part[26:30, 20:30] = False  # 60 of gt 1's 100 px: IoU 0.6 < 0.65
    p_part[29, 20:22] = True  # 62 px: IoU 0.62
    preds = (np.stack([p_hit, p_fp, p_part]), np.array([0.9, 0.8, 0.7]))
    ap = M.coco_mask_ap([preds], [gts])
    # ranked: 0.9 TP (recall 0.5, precision 1), 0.8 FP, 0.7 TP at IoU thresholds 0.50, 0.55, 0.60 (recall 1,
    # precision 2/3) and FP above. COCO interpolates precision at 101 recall points 0, 0.01, .., 1:
    full = (51 * 1.0 + 50 * 2 / 3) / 101
    half = 51 / 101
    assert ap["ap50"] == pytest.approx(full)
    assert ap["ap75"] == pytest.approx(half)
    assert ap["ap"] == pytest.approx((3 * full + 7 * half) / 10)
    nothing = M.coco_mask_ap([(np.zeros((0, h, w), bool), np.zeros(0))], [gts])
    assert nothing["ap"] <= 0


def test_bce_dice_loss_against_its_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 9, generator=g)
    target = (torch.rand(3, 8, 9, generator=g) > 0.5).float()
    p = logits.sigmoid()
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    assert float(M.bce_dice_loss(logits, target)) == pytest.approx(float(bce + dice.mean()), rel=1e-5)
    valid = torch.zeros(3, 8, 9, dtype=torch.bool)
    valid[:, :4] = True  # only the top half counts
    half = M.bce_dice_loss(logits[:, :4], target[:, :4], bce_weight=0.5, dice_weight=0.5)
    assert float(M.bce_dice_loss(logits, target, valid, 0.5, 0.5)) == pytest.approx(float(half), rel=1e-5)


def test_coco_mask_ap_max_dets_scores_every_prediction():
    # 150 exact predictions: COCOeval's default 100 detections per image reach recall 100/150 only
    h = w = 64
    gts = np.zeros((150, h, w), bool)
    for i in range(150):
        gts[i, (i // 12) * 5 : (i // 12) * 5 + 4, (i % 12) * 5 : (i % 12) * 5 + 4] = True
    scores = np.random.default_rng(0).random(150)
    capped = M.coco_mask_ap([(gts, scores)], [gts])
    assert capped["ap"] < 0.7
    assert M.coco_mask_ap([(gts, scores)], [gts], max_dets=150) == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0}
