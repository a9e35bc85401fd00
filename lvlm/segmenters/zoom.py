"""Zoomed prompts: each box is segmented on a crop around it, enlarged to the segmenter's full input size.

A prompted SAM-family segmenter resizes the whole image to its input (1024 px for SAM, 256 px for
LiteMedSAM): a 15 px nucleus of a 512 px image becomes 7 px of LiteMedSAM's input, 2 cells of its 64 x 64
embedding. Zooming crops a square window around each box (side ``context`` x the box's longer side, at
least ``min_crop`` px), runs the image encoder on that crop at the full input size, decodes the box in the
crop's frame and pastes the mask back into the input image's frame, at the input resolution. This is the
crop-and-zoom recipe of SAHI (Akyon et al., "Slicing Aided Hyper Inference", ICIP 2022) and of
micro-sam's tiled prediction applied per prompt; MedSAM's own inference frames each box the same way.

- Windows keep their side: a box at an image border gets a window shifted inside the image (no padding, so
  the encoder never sees an artificial edge); only a window larger than the image is clipped to it, and then
  the segmenter pads it as it pads any non-square image.
- Boxes whose own window would have nearly the same side (within ``share_ratio``) and that lie inside another
  box's window with at least ``share_margin`` x their side of context on every side share that window: one
  encoder pass for a cluster of small objects.
- All windows of an image go through the encoder ``batch`` at a time (``segmenter._embed_many`` when the
  segmenter has a batched encoder pass, else one ``_embed`` per window).

Use it through the ``zoom`` argument of a prompted segmenter (``zoom: {context: 4.0}`` in a config), or
call :func:`segment_zoomed` directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..types import Candidates, Prompts


@dataclass(frozen=True)
class ZoomSettings:
    """How prompts are zoomed.

    Args:
        context: window side as a multiple of the box's longer side (4.0: the object fills about a quarter
            of the window's side, with its surroundings around it; SAM-family models were trained on objects
            that fill a good part of the image).
        min_crop: smallest window side in input pixels (a 3 px box still gets a window with some context).
        batch: windows per image-encoder call.
        share: let boxes share a window where each has enough context in it (fewer encoder passes).
        share_ratio: largest ratio between a box's own window side and the shared window's side.
        share_margin: context a box needs on every side of a shared window, in multiples of its longer side.
        grid: side in input pixels of a fixed grid of half-overlapping windows over the image (0: none). A
            box whose own window is at most ``grid`` and at least ``grid / grid_ratio`` is decoded in the grid
            window where it has the most context (at least ``share_margin`` x its side on every side, or the
            image border): a few encoder passes cover a field of small objects at one zoom.
        grid_ratio: largest ratio between ``grid`` and the own window side of a box decoded on the grid.
        box_margin: pixels added on every side of each box before it is decoded (0: the box as given). Tight
            boxes (drawn around a mask) fit MedSAM-family decoders better loosened a little, as those models
            were trained with perturbed boxes; detector boxes are usually loose already. The window is chosen
            from the box as given.
    """

    context: float = 4.0
    min_crop: int = 32
    batch: int = 8
    share: bool = True
    share_ratio: float = 1.25
    share_margin: float = 1.0
    grid: int = 0
    grid_ratio: float = 2.0
    box_margin: float = 0.0


def zoom_settings(value: Any) -> ZoomSettings | None:
    """A config's ``zoom`` value as :class:`ZoomSettings`: None / false -> None (off), true -> the defaults,
    a dict -> those keys over the defaults, a ZoomSettings as is. Bad keys or values raise ConfigError.

    Args:
        value: None, a bool, a dict of :class:`ZoomSettings` fields, or a ZoomSettings.
    """
    if value is None or value is False:
        return None
    if value is True:
        return ZoomSettings()
    if isinstance(value, ZoomSettings):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"zoom={value!r}: expected true/false or a mapping such as {{context: 4.0}}")
    known = set(asdict(ZoomSettings()))
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"zoom: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    z = ZoomSettings(**value)
    for name in ("context", "share_ratio", "grid_ratio"):
        v = getattr(z, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 1.0:
            raise ConfigError(f"zoom.{name}={v!r}: expected a number >= 1")
    for name in ("min_crop", "batch"):
        v = getattr(z, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"zoom.{name}={v!r}: expected an integer >= 1")
    for name in ("share_margin", "box_margin"):
        v = getattr(z, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ConfigError(f"zoom.{name}={v!r}: expected a number >= 0")
    if isinstance(z.grid, bool) or not isinstance(z.grid, int) or z.grid < 0:
        raise ConfigError(f"zoom.grid={z.grid!r}: expected an integer >= 0 (0: no grid)")
    if not isinstance(z.share, bool):
        raise ConfigError(f"zoom.share={z.share!r}: expected true or false")
    return z


def prompt_extents(prompts: Prompts) -> np.ndarray:
    """K x 4 xyxy extent of each prompt: its box, else the bounding box of its points (zero-size for one
    point).

    Args:
        prompts: box and/or point prompts.
    """
    if prompts.boxes is not None:
        ext = prompts.boxes.astype(np.float64).copy()
        if prompts.points is not None:  # box and points: the box grown to hold the points
            ext[:, :2] = np.minimum(ext[:, :2], prompts.points.min(1))
            ext[:, 2:] = np.maximum(ext[:, 2:], prompts.points.max(1))
        return ext
    if prompts.points is not None:
        return np.concatenate([prompts.points.min(1), prompts.points.max(1)], axis=1).astype(np.float64)
    raise ValueError("zoomed prompts need boxes or points")


def crop_window(
    extent: np.ndarray, height: int, width: int, settings: ZoomSettings
) -> tuple[int, int, int, int]:
    """The integer window (x0, y0, x1, y1) of one prompt extent: a square of side
    ``max(min_crop, context * longer side)`` centred on the extent, shifted inside the image, clipped to it
    only where it is larger than the image.

    Args:
        extent: xyxy extent of the prompt, input pixels.
        height, width: the input image's size.
        settings: the zoom settings.
    """
    x0, y0, x1, y1 = (float(v) for v in extent)
    side = max(float(settings.min_crop), settings.context * max(x1 - x0, y1 - y0))
    side = math.ceil(side)
    out = []
    for lo, hi, size in ((x0, x1, width), (y0, y1, height)):
        if side >= size:
            out.append((0, size))
            continue
        start = math.floor((lo + hi) / 2 - side / 2)
        start = min(max(start, 0), size - side)
        out.append((start, start + side))
    (wx0, wx1), (wy0, wy1) = out
    return wx0, wy0, wx1, wy1


def _side(window) -> int:
    return max(window[2] - window[0], window[3] - window[1])


def assign_windows(
    extents: np.ndarray, height: int, width: int, settings: ZoomSettings
) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Windows for K prompt extents and, per prompt, the index of the window it is decoded in.

    Without ``share`` every prompt has its own window. With it, prompts are visited from the largest window
    down; a prompt not yet placed opens its own window, and every later prompt whose own window side is within
    ``share_ratio`` of it and that has ``share_margin`` x its longer side of context inside the window on
    every
    side (or reaches the image border there) joins it.

    Args:
        extents: K x 4 xyxy prompt extents.
        height, width: the input image's size.
        settings: the zoom settings.
    """
    own = [crop_window(e, height, width, settings) for e in extents]
    k = len(own)
    assign = np.full(k, -1, np.int64)
    if not settings.share:
        return own, np.arange(k)
    sides = np.array([_side(w) for w in own], np.float64)
    order = np.argsort(-sides, kind="stable")
    windows: list[tuple[int, int, int, int]] = []
    if settings.grid > 0:
        _assign_grid(extents, sides, height, width, settings, windows, assign)
    for i in order:
        if assign[i] >= 0:
            continue
        win = own[i]
        wi = len(windows)
        windows.append(win)
        assign[i] = wi
        wx0, wy0, wx1, wy1 = win
        for j in order:
            if assign[j] >= 0:
                continue
            if not (sides[j] * settings.share_ratio >= sides[i] >= sides[j] / settings.share_ratio):
                continue
            x0, y0, x1, y1 = extents[j]
            m = settings.share_margin * max(x1 - x0, y1 - y0, 1.0)
            ok = (
                (x0 - m >= wx0 or wx0 == 0)
                and (y0 - m >= wy0 or wy0 == 0)
                and (x1 + m <= wx1 or wx1 == width)
                and (y1 + m <= wy1 or wy1 == height)
                and x0 >= wx0
                and y0 >= wy0
                and x1 <= wx1
                and y1 <= wy1
            )
            if ok:
                assign[j] = wi
    return windows, assign


def grid_windows(height: int, width: int, side: int) -> list[tuple[int, int, int, int]]:
    """Square windows (x0, y0, x1, y1) of ``side`` px over an image, stride ``side / 2``, the last row and
    column flush with the far border (clipped to the image where it is smaller than ``side``).

    Args:
        height, width: the image's size.
        side: window side, pixels.
    """

    def starts(size: int) -> list[int]:
        if side >= size:
            return [0]
        step = max(1, side // 2)
        out = list(range(0, size - side, step))
        return out + [size - side]

    return [
        (x, y, min(x + side, width), min(y + side, height)) for y in starts(height) for x in starts(width)
    ]


def _assign_grid(
    extents: np.ndarray,
    sides: np.ndarray,
    height: int,
    width: int,
    settings: ZoomSettings,
    windows: list,
    assign: np.ndarray,
) -> None:
    """Place the boxes that fit the grid (see :class:`ZoomSettings`) in the grid window where their smallest
    margin is largest; only the grid windows that receive a box are appended to ``windows``."""
    grid = grid_windows(height, width, settings.grid)
    g = np.asarray(grid, np.float64)
    used: dict[int, int] = {}
    for j in range(len(extents)):
        if not settings.grid / settings.grid_ratio <= sides[j] <= settings.grid:
            continue
        x0, y0, x1, y1 = extents[j]
        # margin on each side; a window edge on the image border counts as unlimited margin
        big = 1e9
        ml = np.where(g[:, 0] == 0, big, x0 - g[:, 0])
        mt = np.where(g[:, 1] == 0, big, y0 - g[:, 1])
        mr = np.where(g[:, 2] == width, big, g[:, 2] - x1)
        mb = np.where(g[:, 3] == height, big, g[:, 3] - y1)
        inside = (x0 >= g[:, 0]) & (y0 >= g[:, 1]) & (x1 <= g[:, 2]) & (y1 <= g[:, 3])
        margin = np.where(inside, np.minimum.reduce([ml, mt, mr, mb]), -big)
        best = int(np.argmax(margin))
        if margin[best] < settings.share_margin * max(x1 - x0, y1 - y0, 1.0):
            continue
        if best not in used:
            used[best] = len(windows)
            windows.append(grid[best])
        assign[j] = used[best]


def _embed_windows(segmenter, crops: list[np.ndarray], batch: int) -> list[Any]:
    """Embeddings of the crops, ``batch`` per encoder call where the segmenter can batch: its
    ``_embed_many(images)``, or its SAM-family adapter's ``encode`` (one B x 3 x S x S encoder input), else
    one
    ``_embed`` per crop."""
    from ..models.sam import ImageEmbedding, SamFamilyAdapter

    many = getattr(segmenter, "_embed_many", None)
    adapter = getattr(segmenter, "adapter", None)
    if (
        many is None
        and isinstance(adapter, SamFamilyAdapter)
        and getattr(segmenter, "embeddings", None) is None
    ):

        def many(images):
            feats = adapter.encode(images)
            return [
                ImageEmbedding(feats[i : i + 1], im.shape[:2], tuple(adapter.input_size(*im.shape[:2])))
                for i, im in enumerate(images)
            ]

    if many is None:
        return [segmenter._embed(c) for c in crops]
    out: list[Any] = []
    for s in range(0, len(crops), batch):
        out.extend(many(crops[s : s + batch]))
    return out


def _shifted(
    prompts: Prompts, idx: np.ndarray, dx: int, dy: int, margin: float = 0.0, size: tuple[int, int] = (0, 0)
) -> Prompts:
    boxes = points = labels = None
    if prompts.boxes is not None:
        boxes = prompts.boxes[idx] - np.array([dx, dy, dx, dy], np.float32)
        if margin:  # loosened, and kept inside the crop (size: its h, w)
            boxes = boxes + np.array([-margin, -margin, margin, margin], np.float32)
            boxes = np.clip(boxes, 0, np.array([size[1], size[0], size[1], size[0]], np.float32))
    if prompts.points is not None:
        points = prompts.points[idx] - np.array([dx, dy], np.float32)
        labels = prompts.point_labels[idx]
    return Prompts(boxes, points, labels, prompts.text)


def segment_zoomed(segmenter, image: np.ndarray, prompts: Prompts, zoom: Any = True) -> Candidates:
    """One mask per prompt, each decoded on a zoomed window around it, pasted back at the input resolution.

    Args:
        segmenter: a prompted segmenter with ``_embed(image)`` and ``_decode(embedding, prompts, image)``
            (every SAM-family segmenter of lvlm), optionally ``_embed_many(images)`` for batched encoding
            and ``_decode_many(embeddings, prompts_list, images)`` for the prompts of all windows in shared
            decoder calls.
        image: H x W x 3 uint8 RGB input image.
        prompts: K box and/or point prompts in the image's pixel frame (already validated and clipped).
        zoom: :class:`ZoomSettings`, or a value :func:`zoom_settings` accepts.

    Returns:
        Candidates with K masks (H x W, False outside each prompt's window), the segmenter's scores and
        ``extra["zoom_windows"]`` (the windows, xyxy) and ``extra["zoom_window_index"]`` (window per prompt).
    """
    settings = zoom_settings(zoom) or ZoomSettings()
    h, w = image.shape[:2]
    k = len(prompts)
    source = getattr(segmenter, "source", "")
    if k == 0 or not prompts.has_geometry:
        return Candidates.empty(h, w, source=source)
    extents = prompt_extents(prompts)
    windows, assign = assign_windows(extents, h, w, settings)
    crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
    embeddings = _embed_windows(segmenter, crops, settings.batch)
    masks = np.zeros((k, h, w), bool)
    scores = np.zeros(k, np.float32)
    stability = None
    used = [wi for wi in range(len(windows)) if np.any(assign == wi)]
    rows = {wi: np.flatnonzero(assign == wi) for wi in used}
    shifted = [
        _shifted(prompts, rows[wi], windows[wi][0], windows[wi][1], settings.box_margin, crops[wi].shape[:2])
        for wi in used
    ]
    many = getattr(segmenter, "_decode_many", None)
    if many is not None:  # the prompts of all windows share decoder calls
        decoded = many([embeddings[wi] for wi in used], shifted, [crops[wi] for wi in used])
    else:
        decoded = [segmenter._decode(embeddings[wi], pr, crops[wi]) for wi, pr in zip(used, shifted)]
    for wi, cands in zip(used, decoded):
        idx, (x0, y0, x1, y1) = rows[wi], windows[wi]
        masks[idx, y0:y1, x0:x1] = cands.masks
        scores[idx] = cands.scores
        if cands.stability is not None:
            if stability is None:
                stability = np.zeros(k, np.float32)
            stability[idx] = cands.stability
    return Candidates(
        masks,
        scores=scores,
        stability=stability,
        source=source,
        extra={"zoom_windows": np.asarray(windows, np.int64).reshape(-1, 4), "zoom_window_index": assign},
    )
