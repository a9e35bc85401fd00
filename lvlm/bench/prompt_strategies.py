"""Prompts derived from a ground-truth mask, and the prompt-strategy comparison of seed 002.

Four ways a user may prompt a SAM-family segmenter for one object, each computed from its mask:

- ``center``: one point at the centre of mass, snapped to the nearest mask pixel when the centre of
  mass falls outside the object (rings, crescents, C shapes);
- ``edge``: one point on the object's boundary: its first pixel in raster order (top-most row, then
  left-most column), the point a contour tracer starts from;
- ``grid4``: four points on a 2 x 2 grid at the thirds of the object's box, each snapped to the
  nearest mask pixel (so every point is a foreground click);
- ``box``: the tight xyxy box (right / bottom edges exclusive, as :func:`lvlm.types.masks_to_boxes`).

:func:`evaluate_prompt_strategies` runs any number of prompted segmenters (e.g. a base and a specialised
decoder) on (image, instance masks) with every strategy, one ``segment`` call per image and strategy,
and returns one row per (model, strategy) with means and standard deviations of IoU, Dice and
boundary precision / recall / F1; :func:`format_table` prints those rows as seed 002's table.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..types import Prompts, masks_to_boxes

STRATEGIES = ("center", "edge", "grid4", "box")
LABELS = {
    "center": "Center-of-Mass (Single)",
    "edge": "Edge (Single)",
    "grid4": "Multi-Point Grid (4 pts)",
    "box": "Box (tight)",
}
METRICS = ("iou", "dice", "boundary_precision", "boundary_recall", "boundary_f1")


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: no prompt can be derived from it")
    return mask


def snap_to_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Each (x, y) of ``xy`` (N x 2) moved to the nearest foreground pixel of ``mask`` (unchanged when inside)."""
    mask = _check_mask(mask)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ys, xs = np.nonzero(mask)
    out = np.empty_like(xy)
    for i, (x, y) in enumerate(xy):  # N is 1 or 4
        xi, yi = round(x), round(y)
        if 0 <= yi < mask.shape[0] and 0 <= xi < mask.shape[1] and mask[yi, xi]:
            out[i] = (xi, yi)
        else:
            j = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
            out[i] = (xs[j], ys[j])
    return out.astype(np.float32)


def center_point(mask: np.ndarray) -> np.ndarray:
    """1 x 2 (x, y): the centre of mass, snapped inside the mask."""
    mask = _check_mask(mask)
    ys, xs = np.nonzero(mask)
    return snap_to_mask(mask, np.array([[xs.mean(), ys.mean()]]))


def edge_point(mask: np.ndarray) -> np.ndarray:
    """1 x 2 (x, y): the object's first pixel in raster order (always on its boundary)."""
    mask = _check_mask(mask)
    flat = int(np.argmax(mask.reshape(-1)))
    y, x = divmod(flat, mask.shape[1])
    return np.array([[x, y]], np.float32)


def grid_points(mask: np.ndarray, n: int = 4) -> np.ndarray:
    """n x 2 points (n a square number) on a grid at the inner fractions of the box, snapped inside."""
    mask = _check_mask(mask)
    side = round(np.sqrt(n))
    if side * side != n:
        raise ValueError(f"grid_points needs a square number of points, got {n}")
    ys, xs = np.nonzero(mask)
    gx = np.linspace(xs.min(), xs.max(), side + 2)[1:-1]
    gy = np.linspace(ys.min(), ys.max(), side + 2)[1:-1]
    grid = np.array([(x, y) for y in gy for x in gx], np.float64)
    return snap_to_mask(mask, grid)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """The xyxy box (4,) of the mask, right / bottom edges exclusive."""
    return masks_to_boxes(_check_mask(mask)[None])[0]


_POINT_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "center": center_point,
    "edge": edge_point,
    "grid4": grid_points,
}


def make_prompts(masks: Sequence[np.ndarray] | np.ndarray, strategy: str) -> Prompts:
    """K prompts, one per mask of ``masks`` (K x H x W), made with ``strategy`` (see ``STRATEGIES``)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if strategy == "box":
        for m in masks:
            _check_mask(m)
        return Prompts(boxes=masks_to_boxes(masks))
    if strategy not in _POINT_FNS:
        raise ValueError(f"unknown prompt strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    pts = np.stack([_POINT_FNS[strategy](m) for m in masks])  # K x P x 2
    return Prompts(points=pts, point_labels=np.ones(pts.shape[:2], np.int64))


def score_masks(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> list[dict[str, float]]:
    """IoU, Dice and boundary precision / recall / F1 (within ``tolerance`` px) of K predicted masks
    (K x H x W) against their ground truth, with :mod:`lvlm.bench.metrics` (one batched pass)."""
    from .metrics import segmentation_metrics

    m = segmentation_metrics(np.asarray(pred, bool), np.asarray(gt, bool), tolerance=tolerance)
    return [{k: float(m[k][i]) for k in METRICS} for i in range(len(pred))]


def evaluate_prompt_strategies(
    segmenters: Mapping[str, Any],
    images: Iterable[tuple[np.ndarray, np.ndarray]],
    strategies: Sequence[str] = STRATEGIES,
    tolerance: float = 2.0,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Compare segmenters and prompt strategies on (image, K x H x W instance masks) pairs.

    ``segmenters`` maps a model name to a :class:`~lvlm.components.PromptedSegmenter` (anything with
    ``segment(image, prompts) -> Candidates`` returning one mask per prompt). Returns ``(rows, per_item)``:
    one summary row per (model, strategy) with ``<metric>_mean`` / ``<metric>_std`` and ``num_samples``,
    and the per-object scores they were computed from.
    """
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown prompt strategy {s!r}; valid strategies: {', '.join(STRATEGIES)}")
    from tqdm.auto import tqdm

    per_item: list[dict[str, Any]] = []
    for i, (image, masks) in enumerate(tqdm(list(images), desc="prompt strategies", disable=not progress)):
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim == 2:
            masks = masks[None]
        masks = masks[masks.reshape(len(masks), -1).any(1)]
        if len(masks) == 0:
            continue
        for strategy in strategies:
            prompts = make_prompts(masks, strategy)
            for name, seg in segmenters.items():
                pred = seg.segment(image, prompts).masks
                if len(pred) != len(masks):
                    raise ValueError(f"{name} returned {len(pred)} masks for {len(masks)} prompts")
                for k, scores in enumerate(score_masks(pred, masks, tolerance)):
                    per_item.append({"model": name, "strategy": strategy, "image": i, "object": k, **scores})
    return summarise(per_item, strategies, list(segmenters)), per_item


def summarise(per_item: list[dict[str, Any]], strategies: Sequence[str] = STRATEGIES,
              models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per (model, strategy) means and (population) standard deviations of the per-object scores."""
    from .metrics import summarize

    groups = summarize(per_item, METRICS, by=("model", "strategy"))
    models = models if models is not None else list(dict.fromkeys(r["model"] for r in per_item))
    rows = []
    for name in models:
        for strategy in strategies:
            g = groups.get((name, strategy))
            if g is None:
                continue
            row: dict[str, Any] = {"model": name, "prompt_strategy": strategy}
            row.update({k: v for k, v in g.items() if k != "n"})
            row["num_samples"] = g["n"]
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], digits: int = 3) -> str:
    """A markdown table of :func:`summarise` rows (mean ± std per metric)."""
    head = ["model", "prompt strategy", "IoU", "Dice", "boundary precision", "boundary recall", "boundary F1", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], LABELS.get(r["prompt_strategy"], r["prompt_strategy"])]
        cells += [f"{r[f'{m}_mean']:.{digits}f} ± {r[f'{m}_std']:.{digits}f}" for m in METRICS]
        cells.append(str(r["num_samples"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
