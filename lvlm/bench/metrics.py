"""Segmentation metrics of predicted vs ground-truth binary masks, batched, on numpy arrays or torch tensors.

Every function takes ``pred`` and ``gt`` as H x W or B x H x W (bool or 0/1) arrays or tensors and
returns one value per mask pair (a float for H x W input, a float64 array / tensor of B otherwise).

Conventions for empty masks (every 0/0 ratio): the value is **1 when both masks are empty**, else 0.
So a correct "nothing here" (both empty) scores IoU = Dice = precision = recall = 1; predicting nothing
for a non-empty object scores 0 everywhere; predicting something where the truth is empty scores 0.

Boundary metrics (seed 002): the boundary of a mask is its pixels with a 4-neighbour outside the mask
(the image frame is not a boundary: outside the image counts as the nearest edge pixel). Boundary
precision is the fraction of predicted boundary pixels within ``tolerance`` pixels (Euclidean) of a
ground-truth boundary pixel; boundary recall the converse; boundary F1 their harmonic mean (0 when both
are 0). A mask with no boundary (empty, or the full image) follows the empty-mask convention above.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

METRICS = ("iou", "dice", "precision", "recall", "boundary_precision", "boundary_recall", "boundary_f1")
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
    """Pixel counts ``tp``, ``fp``, ``fn``, ``tn`` per mask pair (int64)."""
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
    """Intersection over union |P & G| / |P | G| (1 when both are empty)."""
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, ng, empty = _counts(p, g)
    return _out(_ratio(tp, np_ + ng - tp, empty), is_np, single)


def dice(pred: Any, gt: Any):
    """Dice = pixel F1 = 2 |P & G| / (|P| + |G|) (1 when both are empty)."""
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, ng, empty = _counts(p, g)
    return _out(_ratio(2 * tp, np_ + ng, empty), is_np, single)


def precision(pred: Any, gt: Any):
    """|P & G| / |P|; an empty prediction scores 1 if the truth is empty too, else 0."""
    p, g, is_np, single = _pair(pred, gt)
    tp, np_, _, empty = _counts(p, g)
    return _out(_ratio(tp, np_, empty), is_np, single)


def recall(pred: Any, gt: Any):
    """|P & G| / |G|; an empty truth scores 1 if the prediction is empty too, else 0."""
    p, g, is_np, single = _pair(pred, gt)
    tp, _, ng, empty = _counts(p, g)
    return _out(_ratio(tp, ng, empty), is_np, single)


def boundary(mask: Any):
    """Boundary pixels (same shape and type family as ``mask``): mask pixels with a 4-neighbour outside it."""
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
    """Boundary ``precision``, ``recall`` and ``f1`` with a pixel ``tolerance``."""
    p, g, is_np, single = _pair(pred, gt)
    return {k.replace("boundary_", ""): _out(v, is_np, single) for k, v in _boundary_scores(p, g, tolerance).items()}


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
    """Every metric of :data:`METRICS` (plus pixel areas ``pred_area`` / ``gt_area``) in one pass."""
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


# --- aggregation ------------------------------------------------------------------------------------

def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, population std (ddof = 0), count) of the finite values; NaNs when there are none."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS,
              by: str | Sequence[str] | None = None) -> dict[Any, dict[str, float]]:
    """Mean / std / n of ``metrics`` over ``rows`` (dicts), per group of the ``by`` key(s).

    ``by`` names row keys or ``tags.<name>`` (e.g. ``"tags.difficulty"``); rows missing the key go to
    group ``None``. Returns ``{group: {"<metric>_mean": .., "<metric>_std": .., "n": ..}}``;
    without ``by`` the single group is ``"all"``.
    """
    keys = [by] if isinstance(by, str) else list(by or [])
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        g = tuple(_lookup(r, k) for k in keys) if keys else "all"
        if keys and len(keys) == 1:
            g = g[0]
        groups.setdefault(g, []).append(r)
    out = {}
    for g, rs in groups.items():
        d: dict[str, float] = {}
        n = 0
        for m in metrics:
            mean, std, n_m = mean_std(r.get(m) for r in rs)
            d[f"{m}_mean"], d[f"{m}_std"] = mean, std
            n = max(n, n_m)
        d["n"] = n
        out[g] = d
    return out


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    cur: Any = row
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur
