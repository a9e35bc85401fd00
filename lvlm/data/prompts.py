"""Prompts derived from a ground-truth mask, as a user would give them for one object.

Four strategies, each computed from the object's mask:

- ``center``: one point at the centre of mass, snapped to the nearest mask pixel when the centre of
  mass falls outside the object (rings, crescents, C shapes);
- ``edge``: one point on the object's boundary: its first pixel in raster order (top-most row, then
  left-most column), the point a contour tracer starts from;
- ``grid4``: four points on a 2 x 2 grid at the thirds of the object's box, each snapped to the
  nearest mask pixel (so every point is a foreground click);
- ``box``: the tight xyxy box (right / bottom edges exclusive, as :func:`lvlm.types.masks_to_boxes`).

Used by the prompt-strategy benchmark (:mod:`lvlm.bench.prompt_strategies`), the decoder trainers and the
synthetic datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..types import Prompts, masks_to_boxes

STRATEGIES = ("center", "edge", "grid4", "box")


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: no prompt can be derived from it")
    return mask


def snap_to_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Each (x, y) of ``xy`` (N x 2) moved to the nearest foreground pixel of ``mask`` (unchanged when
    inside).

    Args:
        mask: an H x W bool mask with at least one pixel.
        xy: N x 2 (x, y) points.
    """
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
    """1 x 2 (x, y): the centre of mass, snapped inside the mask.

    Args:
        mask: an H x W bool mask with at least one pixel.
    """
    mask = _check_mask(mask)
    ys, xs = np.nonzero(mask)
    return snap_to_mask(mask, np.array([[xs.mean(), ys.mean()]]))


def edge_point(mask: np.ndarray) -> np.ndarray:
    """1 x 2 (x, y): the object's first pixel in raster order (always on its boundary).

    Args:
        mask: an H x W bool mask with at least one pixel.
    """
    mask = _check_mask(mask)
    flat = int(np.argmax(mask.reshape(-1)))
    y, x = divmod(flat, mask.shape[1])
    return np.array([[x, y]], np.float32)


def grid_points(mask: np.ndarray, n: int = 4) -> np.ndarray:
    """n x 2 points (n a square number) on a grid at the inner fractions of the box, snapped inside.

    Args:
        mask: an H x W bool mask with at least one pixel.
        n: the number of points, a square number.
    """
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
    """The xyxy box (4,) of the mask, right / bottom edges exclusive.

    Args:
        mask: an H x W bool mask with at least one pixel.
    """
    return masks_to_boxes(_check_mask(mask)[None])[0]


_POINT_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "center": center_point,
    "edge": edge_point,
    "grid4": grid_points,
}


def make_prompts(masks: Sequence[np.ndarray] | np.ndarray, strategy: str) -> Prompts:
    """K prompts, one per mask of ``masks`` (K x H x W), made with ``strategy`` (see ``STRATEGIES``).

    Args:
        masks: K x H x W masks (or one H x W mask).
        strategy: one of ``STRATEGIES``.
    """
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
