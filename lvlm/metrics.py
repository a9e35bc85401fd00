"""Segmentation metrics and losses, the one copy used by the benchmark and by every trainer.

Pixel metrics of predicted vs ground-truth binary masks are batched, on numpy arrays or torch tensors.

Every function takes ``pred`` and ``gt`` as H x W or B x H x W (bool or 0/1) arrays or tensors and
returns one value per mask pair (a float for H x W input, a float64 array / tensor of B otherwise).

Conventions for empty masks (every 0/0 ratio): the value is **1 when both masks are empty**, else 0.
So a correct "nothing here" (both empty) scores IoU = Dice = precision = recall = 1; predicting nothing
for a non-empty object scores 0 everywhere; predicting something where the truth is empty scores 0.

Boundary metrics (the prompt-strategy comparison of docs/benchmarks.md): the boundary of a mask is its pixels
with a 4-neighbour outside the mask (the image frame is not a boundary: outside the image counts as the
nearest edge pixel). Boundary precision is the fraction of predicted boundary pixels within ``tolerance``
pixels (Euclidean) of a ground-truth boundary pixel; boundary recall the converse; boundary F1 their harmonic
mean (0 when both are 0). A mask with no boundary (empty, or the full image) follows the empty-mask convention
above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

METRICS = ("iou", "dice", "precision", "recall", "boundary_precision", "boundary_recall", "boundary_f1")

#: Row metrics a benchmark may add when its pipelines produce them (higher is better for all), with their
#: table headings: :func:`oracle_iou`, :func:`selection_efficiency`, :func:`match_instances`' ``f1`` /
#: ``matched_iou`` / ``best_iou``, and :func:`coco_mask_ap`'s ``ap`` / ``ap50``.
OPTIONAL_METRICS = {
    "oracle_iou": "Oracle IoU",
    "selection_efficiency": "Sel. eff.",
    "instance_f1": "Inst. F1",
    "matched_iou": "Matched IoU",
    "best_iou": "Best IoU / GT",
    "mask_ap": "Mask AP",
    "mask_ap50": "AP50",
}
DEFAULT_TOLERANCE = 2


def _as_batch(x: Any) -> tuple[torch.Tensor, bool, bool]:
    """-> (B x H x W bool tensor, input was numpy, input was a single mask)."""
    is_np = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(x))) if is_np else x
    single = t.ndim == 2
    if single:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"masks must be H x W or B x H x W, got shape {tuple(t.shape)}")
    return t.bool() if t.dtype != torch.bool else t, is_np, single


def _pair(pred: Any, gt: Any) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
    p, is_np, single = _as_batch(pred)
    g, _, _ = _as_batch(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return p, g.to(p.device), is_np, single


def _out(v: torch.Tensor, is_np: bool, single: bool):
    v = v.double()
    if is_np:
        v = v.cpu().numpy()
        return float(v[0]) if single else v
    return v[0] if single else v


def _ratio(num: torch.Tensor, den: torch.Tensor, both_empty: torch.Tensor) -> torch.Tensor:
    """num / den, and where den == 0: 1 for pairs of empty masks, else 0."""
    num, den = num.double(), den.double()
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, both_empty.double())


def confusion(pred: Any, gt: Any) -> dict[str, Any]:
    """Pixel counts ``tp``, ``fp``, ``fn``, ``tn`` per mask pair (int64).

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
    """
    p, g, is_np, single = _pair(pred, gt)
    p, g = p.flatten(1), g.flatten(1)
    tp = (p & g).sum(1)
    fp = (p & ~g).sum(1)
    fn = (~p & g).sum(1)
    tn = p.shape[1] - tp - fp - fn
    out = {}
    for k, v in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn)):
        v = v.cpu().numpy() if is_np else v
        out[k] = (int(v[0]) if is_np else v[0]) if single else v
    return out


def _counts(p: torch.Tensor, g: torch.Tensor):
    p, g = p.flatten(1), g.flatten(1)
    tp = (p & g).sum(1)
    np_, ng = p.sum(1), g.sum(1)
    return tp, np_, ng, (np_ == 0) & (ng == 0)


def iou(pred: Any, gt: Any):
    """Intersection over union |P & G| / |P | G| (1 when both are empty).

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
    """
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, ng, empty = _counts(p, g)
    return _out(_ratio(tp, np_ + ng - tp, empty), is_np, single)


def dice(pred: Any, gt: Any):
    """Dice = pixel F1 = 2 |P & G| / (|P| + |G|) (1 when both are empty).

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
    """
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, ng, empty = _counts(p, g)
    return _out(_ratio(2 * tp, np_ + ng, empty), is_np, single)


def precision(pred: Any, gt: Any):
    """|P & G| / |P|; an empty prediction scores 1 if the truth is empty too, else 0.

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
    """
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, _, empty = _counts(p, g)
    return _out(_ratio(tp, np_, empty), is_np, single)


def recall(pred: Any, gt: Any):
    """|P & G| / |G|; an empty truth scores 1 if the prediction is empty too, else 0.

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
    """
    p, g, is_np, single = _pair(pred, gt)
    tp, _, ng, empty = _counts(p, g)
    return _out(_ratio(tp, ng, empty), is_np, single)


def boundary(mask: Any):
    """Boundary pixels (same shape and type family as ``mask``): mask pixels with a 4-neighbour outside it.

    Args:
        mask: H x W or B x H x W mask(s), numpy or torch.
    """
    m, is_np, single = _as_batch(mask)
    b = _boundary(m)
    b = b[0] if single else b
    return b.cpu().numpy() if is_np else b


def _boundary(m: torch.Tensor) -> torch.Tensor:
    inner = m.clone()  # pixels whose 4 neighbours are all set (outside the image: the edge pixel itself)
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    return m & ~inner


def _dilate(b: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean ``radius`` of a set pixel of ``b`` (B x H x W bool).

    The disk is a stack of horizontal segments: for each row offset ``dy`` the map dilated horizontally
    by ``floor(sqrt(radius^2 - dy^2))``, shifted by ``dy``; boolean shifts only, no r x r convolution.
    """
    if radius < 1:
        return b
    r = int(np.floor(radius))
    h = b.shape[-2]
    rows = [b]  # rows[k]: b dilated horizontally by k pixels
    for k in range(1, r + 1):
        cur = rows[-1].clone()
        cur[:, :, k:] |= b[:, :, :-k]
        cur[:, :, :-k] |= b[:, :, k:]
        rows.append(cur)
    out = rows[r].clone()
    for dy in range(1, min(r, h - 1) + 1):
        seg = rows[int(np.floor(np.sqrt(max(0.0, radius * radius - dy * dy))))]
        out[:, dy:] |= seg[:, :-dy]
        out[:, :-dy] |= seg[:, dy:]
    return out


def boundary_scores(pred: Any, gt: Any, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Boundary ``precision``, ``recall`` and ``f1`` with a pixel ``tolerance``.

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
        tolerance: boundary distance (pixels, Euclidean) within which a boundary pixel counts as matched.
    """
    p, g, is_np, single = _pair(pred, gt)
    return {
        k.replace("boundary_", ""): _out(v, is_np, single)
        for k, v in _boundary_scores(p, g, tolerance).items()
    }


def _boundary_scores(p: torch.Tensor, g: torch.Tensor, tolerance: float) -> dict[str, torch.Tensor]:
    bp, bg = _boundary(p), _boundary(g)
    near_g, near_p = _dilate(bg, tolerance), _dilate(bp, tolerance)
    n_bp, n_bg = bp.flatten(1).sum(1), bg.flatten(1).sum(1)
    both = (n_bp == 0) & (n_bg == 0)
    prec = _ratio((bp & near_g).flatten(1).sum(1), n_bp, both)
    rec = _ratio((bg & near_p).flatten(1).sum(1), n_bg, both)
    f1 = _ratio(2 * prec * rec, prec + rec, torch.zeros_like(both))
    return {"boundary_precision": prec, "boundary_recall": rec, "boundary_f1": f1}


def segmentation_metrics(pred: Any, gt: Any, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Every metric of :data:`METRICS` (plus pixel areas ``pred_area`` / ``gt_area``) in one pass.

    Args:
        pred: predicted H x W or B x H x W masks (numpy or torch, bool or 0/1).
        gt: ground-truth masks of the same shape.
        tolerance: boundary distance (pixels, Euclidean) within which a boundary pixel counts as matched.
    """
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, ng, empty = _counts(p, g)
    vals = {
        "iou": _ratio(tp, np_ + ng - tp, empty),
        "dice": _ratio(2 * tp, np_ + ng, empty),
        "precision": _ratio(tp, np_, empty),
        "recall": _ratio(tp, ng, empty),
        **_boundary_scores(p, g, tolerance),
    }
    out = {k: _out(v, is_np, single) for k, v in vals.items()}
    for k, v in (("pred_area", np_), ("gt_area", ng)):
        v = v.cpu().numpy() if is_np else v
        out[k] = (int(v[0]) if is_np else v[0]) if single else v
    return out


# --- candidates: the best a selector could do ------------------------------------------------------


def pairwise_iou(a: Any, b: Any) -> np.ndarray:
    """N x M IoU matrix of masks ``a`` (N x H x W) against masks ``b`` (M x H x W); 1 for two empty masks.

    Args:
        a: N x H x W masks (numpy or torch, bool or 0/1).
        b: M x H x W masks of the same H x W.
    """
    ta, _, _ = _as_batch(a)
    tb, _, _ = _as_batch(b)
    if ta.shape[1:] != tb.shape[1:]:
        raise ValueError(f"masks of {tuple(ta.shape[1:])} and {tuple(tb.shape[1:])} differ in size")
    fa, fb = ta.flatten(1).double(), tb.to(ta.device).flatten(1).double()
    inter = fa @ fb.T
    na, nb = fa.sum(1), fb.sum(1)
    union = na[:, None] + nb[None, :] - inter
    both_empty = (na[:, None] == 0) & (nb[None, :] == 0)
    return _ratio(inter, union, both_empty).cpu().numpy()


def oracle_iou(candidate_masks: Any, gt: Any) -> float:
    """IoU of the best candidate with the ground truth: the upper bound of any selector over these candidates.

    Args:
        candidate_masks: K x H x W candidate masks (K may be 0: then the IoU of an empty prediction).
        gt: the H x W ground-truth mask.
    """
    g, _, _ = _as_batch(gt)
    c, _, _ = _as_batch(candidate_masks) if len(candidate_masks) else (torch.zeros_like(g), None, None)
    return float(pairwise_iou(c, g)[:, 0].max())


def selection_efficiency(selected_iou: float, oracle: float) -> float:
    """``selected_iou / oracle``: the fraction of the attainable IoU the selector got (NaN when oracle is 0).

    Args:
        selected_iou: IoU of the selected (or combined) mask.
        oracle: :func:`oracle_iou` of the candidates it was chosen from.
    """
    if oracle is None or not np.isfinite(oracle) or oracle <= 0:
        return float("nan")
    return float(selected_iou) / float(oracle)


# --- instances ---------------------------------------------------------------------------------------


def match_instances(pred_masks: Any, gt_masks: Any, iou: float = 0.5) -> dict[str, float]:
    """One-to-one matching of predicted to ground-truth instances (Hungarian on IoU, pairs with IoU >=
    ``iou``).

    Args:
        pred_masks: P x H x W predicted instance masks (P may be 0).
        gt_masks: G x H x W ground-truth instance masks (G may be 0).
        iou: the IoU a pair needs to count as a match.

    Returns:
        ``f1`` (2 TP / (P + G); 1 when both are empty), ``precision`` (TP / P), ``recall`` (TP / G),
        ``tp``, ``n_pred``, ``n_gt``, ``matched_iou`` (mean IoU of the matched pairs, NaN without one)
        and ``best_iou`` (mean over ground-truth instances of their best IoU with any prediction,
        0 for each when there is no prediction; NaN without ground truth).
    """
    from scipy.optimize import linear_sum_assignment

    n_pred, n_gt = len(pred_masks), len(gt_masks)
    if n_pred and n_gt:
        m = pairwise_iou(pred_masks, gt_masks)
        rows, cols = linear_sum_assignment(-m)
        keep = m[rows, cols] >= iou
        matched = m[rows, cols][keep]
        best = float(m.max(0).mean())
    else:
        matched = np.zeros(0)
        best = 0.0 if n_gt else float("nan")
    tp = int(matched.size)
    total = n_pred + n_gt
    return {
        "f1": 2 * tp / total if total else 1.0,
        "precision": tp / n_pred if n_pred else float(n_gt == 0),
        "recall": tp / n_gt if n_gt else float(n_pred == 0),
        "tp": tp,
        "n_pred": n_pred,
        "n_gt": n_gt,
        "matched_iou": float(matched.mean()) if tp else float("nan"),
        "best_iou": best,
    }


def coco_mask_ap(
    predictions: Sequence[tuple[Any, Any]], ground_truths: Sequence[Any], max_dets: int | None = None
) -> dict[str, float]:
    """COCO mask AP (mean over IoU 0.50:0.95), AP50 and AP75 with pycocotools' ``COCOeval`` (``lvlm[bench]``).

    Args:
        predictions: per image, ``(masks P x H x W, scores P)``.
        ground_truths: per image, G x H x W ground-truth instance masks (one category, no crowd regions).
        max_dets: detections scored per image (COCOeval's ``maxDets``, 100 by default; the best-scored
            ``max_dets`` count, the rest are ignored): give at least the most predictions of an image to score
            them all.

    Returns:
        ``{"ap": .., "ap50": .., "ap75": ..}`` in [0, 1] (-1 where COCOeval has nothing to score).
    """
    import contextlib
    import io

    from . import rle
    from .optional import require

    require("pycocotools", "COCO mask AP")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} images")
    images, anns, dets = [], [], []
    for i, ((pm, ps), gm) in enumerate(zip(predictions, ground_truths), start=1):
        gm = np.asarray(gm, bool).reshape(-1, *np.shape(gm)[-2:])
        h, w = gm.shape[-2:]
        images.append({"id": i, "height": int(h), "width": int(w)})
        for m in gm:
            r = rle.encode(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "segmentation": r,
                    "area": rle.area(r),
                    "bbox": rle.to_bbox(r),
                    "iscrowd": 0,
                }
            )
        pm = np.asarray(pm, bool).reshape(-1, h, w)
        for m, s in zip(pm, np.asarray(ps, np.float64).reshape(-1)):
            dets.append({"image_id": i, "category_id": 1, "segmentation": rle.encode(m), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        dt = gt.loadRes(dets) if dets else COCO()
        if not dets:
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="segm")
        if max_dets is not None:
            ev.params.maxDets = [1, 10, max(100, int(max_dets))]
        ev.evaluate()
        ev.accumulate()
    # COCOeval.summarize's AP is for exactly 100 detections; read the accumulated precision at the last
    # maxDets (the same figure when it is 100), area range "all"
    prec = ev.eval["precision"][:, :, :, 0, -1]  # IoU thresholds x recall x categories

    def _mean(x):
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    thr = np.asarray(ev.params.iouThrs)
    return {
        "ap": _mean(prec),
        "ap50": _mean(prec[np.isclose(thr, 0.5)]),
        "ap75": _mean(prec[np.isclose(thr, 0.75)]),
    }


# --- losses ------------------------------------------------------------------------------------------


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    eps: float = 1.0,
) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``, each per sample over its valid pixels, then
    averaged.

    The soft Dice is ``(2 sum p t + eps) / (sum p + sum t + eps)`` with ``p = sigmoid(logits)``.

    Args:
        logits: B x ... logits.
        target: B x ... targets in [0, 1], the shape of ``logits``.
        valid: optional B x ... bool mask of the pixels that count (padding excluded); all by default.
        bce_weight: weight of the binary cross-entropy term.
        dice_weight: weight of the Dice term.
        eps: smoothing of the soft Dice (keeps empty targets finite).
    """
    import torch.nn.functional as F

    x, t = logits.flatten(1), target.flatten(1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = torch.sigmoid(x)
    if valid is not None:
        w = valid.flatten(1).to(logits.dtype)
        bce = (bce * w).sum(1) / w.sum(1).clamp(min=1)
        p, t = p * w, t * w
    else:
        bce = bce.mean(1)
    dice = 1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return (bce_weight * bce + dice_weight * dice).mean()
