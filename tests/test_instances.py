"""Instances as an output: Result.instances, to_coco against pycocotools, and the instances combiner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvlm import Pipeline
from lvlm.combiners.basic import mask_nms
from lvlm.components import MaskGenerator
from lvlm.registry import build
from lvlm.types import Candidates, Instances

mask_utils = pytest.importorskip("pycocotools.mask")


def _random_masks(rng, n, h, w):
    """Blobs of random size and place, some touching the borders, one empty, one a single pixel."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), bool)
    for i in range(n - 2):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(1, max(2, h // 2)), rng.integers(1, max(2, w // 2))
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        masks[i] &= rng.random((h, w)) > 0.1  # holes: several runs per column
    masks[n - 1, h - 1, w - 1] = True
    return masks


@pytest.mark.parametrize("h,w", [(37, 53), (64, 64), (1, 9)])
def test_to_coco_decodes_with_pycocotools_to_the_masks(h, w):
    rng = np.random.default_rng(h * w)
    masks = _random_masks(rng, 7, h, w)
    scores = rng.random(7).astype(np.float32)
    inst = Instances(masks, scores=scores, labels=["cell"] * 7)
    coco = json.loads(json.dumps(inst.to_coco(image_id=5, category_id=3)))  # as written to a file
    assert len(coco) == 7
    for entry, m, s in zip(coco, masks, scores):
        assert entry["image_id"] == 5 and entry["category_id"] == 3
        assert isinstance(entry["segmentation"]["counts"], str) and entry["segmentation"]["size"] == [h, w]
        rle = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert entry["segmentation"]["counts"] == ref["counts"].decode()
        assert entry["area"] == int(mask_utils.area(ref))
        np.testing.assert_allclose(entry["bbox"], mask_utils.toBbox(ref))
        assert entry["score"] == pytest.approx(float(s))


def test_to_coco_scores_ap_one_against_its_own_masks_with_cocoeval():
    """The results file loads into pycocotools' COCOeval: predicting the ground truth gives AP 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    h, w = 48, 64
    masks = _random_masks(rng, 6, h, w)[:-2]  # non-empty ones
    gt = COCO()
    anns = []
    for i, m in enumerate(masks):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": {**r, "counts": r["counts"].decode()},
                "area": float(mask_utils.area(r)),
                "bbox": mask_utils.toBbox(r).tolist(),
                "iscrowd": 0,
            }
        )
    gt.dataset = {
        "images": [{"id": 1, "height": h, "width": w}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    }
    gt.createIndex()
    res = Pipeline(generator=_Fixed(masks), combine="instances")(np.zeros((h, w, 3), np.uint8))
    dt = gt.loadRes(res.to_coco(image_id=1))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


class _Fixed(MaskGenerator):
    def __init__(self, masks, scores=None, labels=None):
        self.masks, self.scores, self.labels = masks, scores, labels

    def generate(self, image):
        return Candidates(self.masks, scores=self.scores, labels=self.labels, source="fixed")


def test_instances_combiner_threshold_nms_and_labels():
    h, w = 40, 40
    m = np.zeros((5, h, w), bool)
    m[0, 5:20, 5:20] = True  # 225 px
    m[1, 6:20, 5:20] = True  # near duplicate of 0 (IoU 0.93), lower score
    m[2, 25:35, 25:35] = True
    m[3, 0:3, 30:33] = True  # 9 px
    # m[4] empty: never an instance
    scores = np.array([0.9, 0.8, 0.6, 0.95, 0.99], np.float32)
    img = np.zeros((h, w, 3), np.uint8)
    labels = ["a", "b", "c", "d", "e"]
    res = Pipeline(generator=_Fixed(m, scores, labels), combine="instances")(img)
    assert res.index == [3, 0, 1, 2] and res.instances.labels == ["d", "a", "b", "c"]
    np.testing.assert_array_equal(res.mask, m.any(0))
    pipe = Pipeline(
        generator=_Fixed(m, scores, labels),
        combine={"name": "instances", "min_score": 0.7, "nms_iou": 0.5, "min_area": 10},
    )
    res = pipe(img)
    assert res.index == [0] and res.instances.labels == ["a"] and res.score == pytest.approx(0.9)
    assert res.to_coco("img")[0]["image_id"] == "img"
    # the text prompt labels candidates that carry no label of their own
    res = Pipeline(generator=_Fixed(m, scores), combine={"name": "instances", "max_instances": 2})(
        img, "blob"
    )
    assert res.instances.labels == ["blob", "blob"] and len(res.to_coco(1)) == 2


def test_mask_nms_agrees_with_pycocotools_iou():
    rng = np.random.default_rng(7)
    masks = _random_masks(rng, 30, 32, 32)
    scores = rng.random(30)
    kept = mask_nms(masks, scores, 0.3)
    rles = [mask_utils.encode(np.asfortranarray(x.astype(np.uint8))) for x in masks]
    iou = mask_utils.iou(rles, rles, [0] * len(rles))
    order = np.argsort(-scores, kind="stable")
    ref: list[int] = []
    for i in order:  # greedy NMS written on pycocotools' IoU matrix
        if not any(iou[i, j] > 0.3 for j in ref):
            ref.append(int(i))
    assert kept == ref and 1 < len(kept) < 30


def test_every_result_has_instances_and_empty_ones_give_no_entries():
    inst = (
        build("combine", "union")
        .combine(np.zeros((4, 4, 3), np.uint8), "x", Candidates.empty(4, 4))
        .instances
    )
    assert len(inst) == 0 and inst.masks.shape == (0, 4, 4) and inst.to_coco(1) == []
