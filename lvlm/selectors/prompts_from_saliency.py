"""Saliency map -> box / point prompts: smoothing, thresholding, connected components, boxes, points.

All coordinates are in the pixel frame of the map (= the input image): xyxy boxes with exclusive
right/bottom edges, points as (x, y) pixel indices. The segmenter maps them to its own frame.

- :func:`smooth`: Gaussian smoothing, ``sigma`` as a fraction of the shorter side (values >= 1: pixels);
- :func:`binarize`: a fixed threshold, ``"otsu"`` or ``"kmeans"`` (two clusters of values, as
  MedCLIP-SAMv2's post-processing);
- :func:`components`: 8-connected regions, largest first, small ones dropped;
- :func:`boxes_from_mask`: ``"largest"`` region's box, the ``"peak"`` region's (highest mean saliency),
  ``"all"`` regions' boxes, or one ``"merged"`` box;
- :func:`points_for_regions`: saliency peaks inside each region (positive) and low-saliency points in
  its box (negative).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..types import masks_to_boxes

THRESHOLDS = ("otsu", "kmeans")
BOX_MODES = ("largest", "peak", "all", "merged", "none")


def sigma_pixels(sigma: float, shape: tuple[int, int]) -> float:
    """``sigma`` in pixels: a fraction (< 1) of the shorter side of ``shape``, or pixels when >= 1.

    Args:
        sigma: a fraction (< 1) of the shorter side, or pixels (>= 1).
        shape: the map's ``(height, width)``.
    """
    if sigma < 0:
        raise ValueError(f"sigma={sigma!r} must be >= 0")
    return float(sigma) * min(shape) if sigma < 1 else float(sigma)


def smooth(saliency: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed map, renormalised to [0, 1] (``sigma=0``: only the renormalisation).

    Args:
        saliency: an H x W saliency map.
        sigma: the Gaussian's sigma (see :func:`sigma_pixels`).
    """
    s = np.asarray(saliency, dtype=np.float32)
    px = sigma_pixels(sigma, s.shape)
    if px > 0:
        s = ndimage.gaussian_filter(s, px, mode="nearest")
    lo, hi = float(s.min()), float(s.max())
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance of a histogram).

    Args:
        values: values in [0, 1] (any shape).
        bins: histogram bins.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    i = int(np.argmax(between[:-1])) if len(between) > 1 else 0
    return float(edges[i + 1])


def kmeans_threshold(values: np.ndarray, iterations: int = 50) -> float:
    """Two-cluster k-means on the values (centres start at min and max): the midpoint of the centres.

    Args:
        values: values in [0, 1] (any shape).
        iterations: the most k-means iterations.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    c0, c1 = float(v.min()), float(v.max())
    if c1 <= c0:
        return c1
    for _ in range(iterations):
        t = (c0 + c1) / 2
        lo, hi = v[v <= t], v[v > t]
        n0 = lo.mean() if lo.size else c0
        n1 = hi.mean() if hi.size else c1
        if n0 == c0 and n1 == c1:
            break
        c0, c1 = n0, n1
    return (c0 + c1) / 2


def threshold_value(saliency: np.ndarray, threshold: float | str) -> float:
    """The threshold for ``saliency``: a number in [0, 1] as is, or ``"otsu"`` / ``"kmeans"``.

    Args:
        saliency: an H x W saliency map in [0, 1].
        threshold: a number in [0, 1], ``"otsu"`` or ``"kmeans"``.
    """
    if isinstance(threshold, str):
        if threshold == "otsu":
            return otsu_threshold(saliency)
        if threshold == "kmeans":
            return kmeans_threshold(saliency)
        raise ValueError(
            f"threshold={threshold!r}; give a number in [0, 1] or one of {', '.join(THRESHOLDS)}"
        )
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold={threshold!r} must lie in [0, 1]")
    return t


def binarize(saliency: np.ndarray, threshold: float | str = "otsu") -> tuple[np.ndarray, float]:
    """``(mask, t)``: pixels with saliency above the threshold ``t``.

    Args:
        saliency: an H x W saliency map in [0, 1].
        threshold: a number in [0, 1], ``"otsu"`` or ``"kmeans"``.
    """
    t = threshold_value(saliency, threshold)
    return np.asarray(saliency) > t, t


def components(mask: np.ndarray, min_area: float = 0.0) -> list[np.ndarray]:
    """8-connected regions of ``mask`` (bool masks), largest first; regions smaller than ``min_area``
    (a fraction of the image area) are dropped.

    Args:
        mask: an H x W bool mask.
        min_area: the smallest region, as a fraction of the image area.
    """
    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    min_px = float(min_area) * mask.size
    return [labels == (i + 1) for i in order if areas[i] > 0 and areas[i] >= min_px]


def boxes_from_mask(
    mask: np.ndarray,
    box_mode: str = "largest",
    min_area: float = 0.0,
    max_boxes: int | None = None,
    saliency: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(boxes K x 4, regions)``: xyxy boxes (exclusive right/bottom) of the mask's regions per
    ``box_mode`` and the region masks they come from (``"merged"``: one box around all kept regions;
    ``"peak"``: the region whose mean ``saliency`` is highest, for maps that light up a second, weaker
    object as well).

    Args:
        mask: an H x W bool mask.
        box_mode: one of ``BOX_MODES`` (``largest``, ``peak``, ``all``, ``merged``, ``none``).
        min_area: the smallest region kept, as a fraction of the image area.
        max_boxes: the most boxes, or None.
        saliency: the H x W saliency map (needed by ``peak``).
    """
    if box_mode not in BOX_MODES:
        raise ValueError(f"box_mode={box_mode!r}; valid: {', '.join(BOX_MODES)}")
    if box_mode == "peak" and (saliency is None or np.shape(saliency) != np.shape(mask)):
        raise ValueError("box_mode='peak' needs the saliency map, of the mask's shape")
    regions = components(mask, min_area)
    if not regions:
        return np.zeros((0, 4), np.float32), []
    if box_mode == "largest":
        regions = regions[:1]
    elif box_mode == "peak":
        sal = np.asarray(saliency, np.float32)
        regions = [max(regions, key=lambda r: float(sal[r].mean()))]
    elif max_boxes is not None:
        regions = regions[: int(max_boxes)]
    if box_mode == "merged":
        regions = [np.logical_or.reduce(regions)]
    return masks_to_boxes(np.stack(regions)), regions


def points_for_regions(
    saliency: np.ndarray,
    regions: list[np.ndarray],
    boxes: np.ndarray | None,
    positive: int = 1,
    negative: int = 0,
    min_distance: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """``(points K x P x 2, labels K x P)``: per region, the ``positive`` highest local maxima of the
    saliency inside it (at least ``min_distance`` apart, a fraction of the shorter side) labelled 1, and
    the ``negative`` lowest-saliency points in its box (outside the region; the whole image when there
    is no box) labelled 0.

    Args:
        saliency: an H x W saliency map.
        regions: the region masks.
        boxes: one xyxy box per region, or None.
        positive: foreground points per region.
        negative: background points per region.
        min_distance: the smallest distance between positive points, as a fraction of the shorter side.
    """
    s = np.asarray(saliency, dtype=np.float32)
    h, w = s.shape
    dist = max(1, round(min_distance * min(h, w)))
    peaks = ndimage.maximum_filter(s, size=2 * dist + 1, mode="nearest") == s
    pts_all, lab_all = [], []
    for k, region in enumerate(regions):
        pts: list[tuple[float, float]] = []
        if positive > 0:
            cand = np.flatnonzero((peaks & region).ravel())
            if cand.size == 0:
                cand = np.flatnonzero(region.ravel())
            cand = cand[np.argsort(-s.ravel()[cand], kind="stable")][:4096]
            chosen: list[int] = []
            for c in cand:  # greedy: strongest first, at least `dist` apart
                y, x = divmod(int(c), w)
                if all(
                    (y - cy) ** 2 + (x - cx) ** 2 >= dist * dist for cy, cx in (divmod(j, w) for j in chosen)
                ):
                    chosen.append(int(c))
                if len(chosen) == positive:
                    break
            while len(chosen) < positive:  # fewer peaks than asked: repeat the best one
                chosen.append(chosen[0])
            pts += [(c % w, c // w) for c in chosen]
        if negative > 0:
            area = np.zeros((h, w), bool)
            if boxes is not None and len(boxes):
                x0, y0, x1, y1 = (round(v) for v in boxes[k])
                area[y0:y1, x0:x1] = True
            area &= ~region
            if not area.any():
                area = ~region if (~region).any() else np.ones((h, w), bool)
            cand = np.flatnonzero(area.ravel())
            cand = cand[np.argsort(s.ravel()[cand], kind="stable")]
            step = max(1, len(cand) // (4 * negative))  # spread the negatives over the lowest quarter
            chosen = [int(c) for c in cand[::step][:negative]]
            while len(chosen) < negative:
                chosen.append(chosen[0])
            pts += [(c % w, c // w) for c in chosen]
        pts_all.append(pts)
        lab_all.append([1] * positive + [0] * negative)
    p = np.asarray(pts_all, dtype=np.float32).reshape(len(regions), positive + negative, 2)
    return p, np.asarray(lab_all, dtype=np.int64).reshape(len(regions), positive + negative)
