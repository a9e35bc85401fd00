"""``tiled``: everything mode on overlapping tiles, with the masks a tile border cut joined again.

Large images and small objects: a generator sees each tile at its full input size (a 256 px tile of a
1024 px image is zoomed 4x for LiteMedSAM), as in SAHI (Akyon et al., "Slicing Aided Hyper Inference and
Fine-tuning for Small Object Detection", ICIP 2022) and micro-sam's tiled automatic segmentation
(Archit et al., "Segment Anything for Microscopy", Nature Methods 2025).

1. Tiles of ``tile_size`` px with ``overlap`` px between neighbours (the last row / column of tiles is
   aligned to the image's edge, so every tile has the full size when the image is larger than a tile).
2. The inner generator runs on each tile; its masks are placed back in the image frame.
3. Cross-tile merge: a mask touching a tile edge that lies inside the image was cut by that edge. Two masks
   from different tiles, at least one of them cut, are joined (union) when they agree in the two tiles'
   overlap (intersection over the smaller of their parts there >= ``merge_thresh``), or, for tiles that
   only touch (``overlap: 0``), when they touch across the shared edge.
4. Duplicates (the same whole object seen by two tiles) are removed by mask NMS at ``nms_thresh``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import MaskGenerator
from ..errors import ConfigError
from ..registry import build, register
from ..types import Candidates


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` with ``overlap`` along an axis of ``size`` (the last one ends
    at ``size``).

    Args:
        size: the image's length along the axis.
        tile: tile side.
        overlap: pixels shared by neighbouring tiles (< tile).
    """
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """The tiles (x0, y0, x1, y1) covering an image, row by row.

    Args:
        height, width: the image's size.
        tile: tile side.
        overlap: pixels shared by neighbouring tiles.
    """
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in tile_starts(height, tile, overlap)
        for x in tile_starts(width, tile, overlap)
    ]


def _cut(mask: np.ndarray, win: tuple[int, int, int, int], height: int, width: int) -> bool:
    """Whether a tile's mask (tile frame) touches a tile edge that lies inside the image."""
    x0, y0, x1, y1 = win
    return bool(
        (x0 > 0 and mask[:, 0].any())
        or (y0 > 0 and mask[0].any())
        or (x1 < width and mask[:, -1].any())
        or (y1 < height and mask[-1].any())
    )


def _intersect(a, b):
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def merge_tiles(pieces: list[dict], height: int, width: int, merge_thresh: float = 0.5) -> list[dict]:
    """Join the pieces of objects cut by tile edges (union-find over pairs of pieces from different tiles).

    Args:
        pieces: one dict per mask: ``mask`` (H x W bool, image frame), ``score``, ``tile`` (index), ``win``
            (its tile, xyxy), ``cut`` (touches an inner tile edge).
        height, width: the image's size.
        merge_thresh: agreement in the tiles' overlap needed to join two pieces.

    Returns:
        The merged masks as dicts with ``mask`` and ``score`` (the largest of the joined pieces' scores).
    """
    from scipy import ndimage

    n = len(pieces)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    boxes = [_bbox(p["mask"]) for p in pieces]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = pieces[i], pieces[j]
            if a["tile"] == b["tile"] or not (a["cut"] or b["cut"]):
                continue
            bi, bj = boxes[i], boxes[j]
            grown = (bi[0] - 1, bi[1] - 1, bi[2] + 1, bi[3] + 1)
            if _intersect(grown, bj) is None:
                continue
            shared = _intersect(a["win"], b["win"])
            if shared is not None:
                x0, y0, x1, y1 = shared
                pa, pb = a["mask"][y0:y1, x0:x1], b["mask"][y0:y1, x0:x1]
                na, nb = int(pa.sum()), int(pb.sum())
                join = min(na, nb) > 0 and (pa & pb).sum() / min(na, nb) >= merge_thresh
            else:  # tiles that only touch: pieces touching across the shared edge
                x0, y0 = max(0, min(bi[0], bj[0]) - 1), max(0, min(bi[1], bj[1]) - 1)
                x1, y1 = min(width, max(bi[2], bj[2]) + 1), min(height, max(bi[3], bj[3]) + 1)
                da = ndimage.binary_dilation(a["mask"][y0:y1, x0:x1], structure=np.ones((3, 3), bool))
                join = bool((da & b["mask"][y0:y1, x0:x1]).any())
            if join:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        mask = np.zeros((height, width), bool)
        for i in members:
            mask |= pieces[i]["mask"]
        out.append(
            {"mask": mask, "score": max(float(pieces[i]["score"]) for i in members), "pieces": len(members)}
        )
    return out


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if len(rows) == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@register(
    "generator",
    "tiled",
    description="everything mode on overlapping tiles of any generator, masks cut by tile edges joined "
    "again (SAHI / micro-sam tiling)",
    source="the inner generator's weights",
)
class TiledGenerator(MaskGenerator):
    """Any everything-mode generator run tile by tile, its masks merged across tile edges.

    Args:
        generator: the inner generator: a spec ``{name: litemedsam, ...}`` (its constructor arguments) or an
            object with ``generate(image)``.
        tile_size: tile side, input pixels (images no larger than a tile run in one piece).
        overlap: pixels shared by neighbouring tiles (0 <= overlap < tile_size); an object narrower than the
            overlap is seen whole by some tile.
        merge_thresh: agreement in the overlap needed to join two pieces of a cut object.
        nms_thresh: mask IoU above which the lower-scored of two final masks is dropped (duplicates).
    """

    cache_size = 2

    def __init__(
        self,
        generator: Any = None,
        tile_size: int = 256,
        overlap: int = 32,
        merge_thresh: float = 0.5,
        nms_thresh: float = 0.5,
    ) -> None:
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 16:
            raise ConfigError(f"tile_size={tile_size!r}: expected an integer >= 16 (pixels)")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile_size:
            raise ConfigError(f"overlap={overlap!r}: expected an integer in [0, tile_size)")
        for name, v in (("merge_thresh", merge_thresh), ("nms_thresh", nms_thresh)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigError(f"{name}={v!r}: expected a number in (0, 1]")
        self.tile_size, self.overlap = tile_size, overlap
        self.merge_thresh, self.nms_thresh = float(merge_thresh), float(nms_thresh)
        spec = {"name": "litemedsam"} if generator is None else generator
        if isinstance(spec, str):
            spec = {"name": spec}
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("name", None)
            if not name:
                raise ConfigError("generator: give the inner generator's name, e.g. {name: litemedsam}")
            spec = build("generator", name, **spec)
        if not hasattr(spec, "generate"):
            raise ConfigError(
                f"generator: {type(spec).__name__} is not a mask generator (no generate method)"
            )
        self.generator = spec
        self.source = f"tiled+{getattr(spec, 'source', type(spec).__name__)}"

    def _generate(self, img: np.ndarray) -> Candidates:
        """Candidates of the whole image, cached by ``MaskGenerator.generate`` (``extra["tiles"]``: the tiles;
        ``extra["pieces"]``: pieces per mask)."""
        from .proposals import mask_nms

        h, w = img.shape[:2]
        wins = tile_windows(h, w, self.tile_size, self.overlap)
        pieces = []
        for t, win in enumerate(wins):
            x0, y0, x1, y1 = win
            cands = self.generator.generate(np.ascontiguousarray(img[y0:y1, x0:x1]))
            for m, s in zip(cands.masks, cands.scores):
                if not m.any():
                    continue
                full = np.zeros((h, w), bool)
                full[y0:y1, x0:x1] = m
                pieces.append(
                    {"mask": full, "score": float(s), "tile": t, "win": win, "cut": _cut(m, win, h, w)}
                )
        merged = merge_tiles(pieces, h, w, self.merge_thresh)
        if not merged:
            out = Candidates.empty(h, w, source=self.source)
        else:
            masks = np.stack([m["mask"] for m in merged])
            scores = np.array([m["score"] for m in merged], np.float32)
            keep = mask_nms(masks, scores, self.nms_thresh, contained=1.0)
            keep = keep[np.argsort(-scores[keep], kind="stable")]
            out = Candidates(
                masks[keep],
                scores=scores[keep],
                source=self.source,
                extra={
                    "tiles": np.asarray(wins, np.int64),
                    "pieces": np.array([merged[i]["pieces"] for i in keep], np.int64),
                },
            )
        return out
