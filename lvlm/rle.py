"""COCO run-length encoding of binary masks, without pycocotools at run time.

The format is COCO's (``pycocotools.mask``): pixels are read in column-major (Fortran) order, the runs
alternate 0 / 1 starting with a run of zeros (of length 0 when the first pixel is set), and the compressed
form packs the run lengths into an ASCII string as ``maskApi.c``'s ``rleToString`` does (5 bits a character,
each count from the third on stored as its difference with the count two before). ``tests/test_rle.py`` pins
every function here against pycocotools.

pycocotools is optional: where it is installed, :func:`encode_many` and :func:`decode_many` hand CPU masks
to its C loops (the same strings, faster); without it, and for masks on an accelerator (whose runs are
found on the device), the vectorised numpy / torch codec here does the work.

An RLE is a dict ``{"size": [h, w], "counts": ...}`` whose counts are a ``str`` (compressed, what
:func:`encode` writes), ``bytes`` (compressed, as pycocotools returns it) or a list of ints (uncompressed,
as segment_anything's ``mask_to_rle_pytorch`` and COCO's ``iscrowd`` annotations write it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["area", "counts_of", "decode", "decode_many", "encode", "encode_many", "to_bbox"]

RLE = dict[str, Any]

# 13 characters of 5 bits hold any int64 difference
_MAX_CHARS = 13

_UNSET = object()
_COCO: Any = _UNSET


def _pycocotools() -> Any:
    """``pycocotools.mask`` when installed (its C loops encode and decode CPU masks faster), else None."""
    global _COCO
    if _COCO is _UNSET:
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            mask_utils = None
        _COCO = mask_utils
    return _COCO


def _as_bool_stack(masks: Any) -> tuple[Any, bool]:
    """N x H x W masks as a bool numpy array, or a bool torch tensor when on an accelerator (flag says
    which)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
    if torch is not None and isinstance(masks, torch.Tensor):
        if masks.ndim != 3:
            raise ValueError(f"expected N x H x W masks, got shape {tuple(masks.shape)}")
        if masks.device.type != "cpu":  # find the runs on the device, copy only them
            return masks.bool(), True
        masks = masks.bool().numpy()
    m = np.asarray(masks).astype(bool, copy=False)
    if m.ndim != 3:
        raise ValueError(f"expected N x H x W masks, got shape {m.shape}")
    return m, False


def _changes_numpy(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask index, column-major position of the first pixel of each new run, first pixels) of N x H x W
    masks, sorted by mask then position; found without transposing the stack."""
    _, h, w = m.shape
    hw = h * w
    m = np.ascontiguousarray(m)
    keys = []
    if h > 1:  # inside a column: row y-1 -> y of column x starts a run at x * h + y
        inside = np.flatnonzero(m[:, 1:, :] != m[:, :-1, :])
        i, rest = np.divmod(inside, (h - 1) * w)
        y, x = np.divmod(rest, w)
        keys.append(i * hw + x * h + y + 1)
    if w > 1:  # across a column break: the bottom of column x -> the top of column x + 1
        across = np.flatnonzero(m[:, 0, 1:] != m[:, h - 1, :-1])
        j, xb = np.divmod(across, w - 1)
        keys.append(j * hw + (xb + 1) * h)
    key = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    mid, pos = np.divmod(key.astype(np.int64), hw)
    return mid, pos, m[:, 0, 0]


def _changes_torch(t: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_changes_numpy` of a bool torch tensor, found on its device (only the changes are copied)."""
    import torch

    n, h, w = t.shape
    f = t.permute(0, 2, 1).reshape(n, h * w)  # Fortran order
    change = torch.nonzero(f[:, 1:] ^ f[:, :-1])
    mid = change[:, 0].cpu().numpy().astype(np.int64)
    pos = change[:, 1].cpu().numpy().astype(np.int64) + 1
    return mid, pos, f[:, 0].cpu().numpy()


def _runs(masks: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Run lengths of all masks in one pass: (counts int64 concatenated, per-mask number of counts, h, w)."""
    m, is_torch = _as_bool_stack(masks)
    n, h, w = (int(v) for v in m.shape)
    hw = h * w
    if n == 0 or hw == 0:
        return np.zeros(0, np.int64), np.zeros(n, np.int64), h, w
    mid, pos, first = _changes_torch(m) if is_torch else _changes_numpy(m)
    # each run ends at a change (or at the end of its mask): its length is the distance to the run's start,
    # the previous change of the same mask or the mask's start; the changes come sorted by (mask, position)
    n_changes = np.bincount(mid, minlength=n).astype(np.int64)
    per_mask = n_changes + 1
    new_mask = np.ones(mid.size, bool)
    new_mask[1:] = mid[1:] != mid[:-1]
    prev = np.empty_like(pos)
    prev[1:] = pos[:-1]
    prev[new_mask] = 0
    lengths = np.empty(int(per_mask.sum()), np.int64)
    lengths[np.arange(mid.size) + mid] = pos - prev
    ends = np.cumsum(per_mask) - 1
    last = np.zeros(n, np.int64)
    has = n_changes > 0
    last[has] = pos[np.cumsum(n_changes)[has] - 1]
    lengths[ends] = hw - last
    if first.any():  # COCO starts with a run of zeros: prepend a 0 to the masks whose first pixel is set
        first_run = np.concatenate([[0], np.cumsum(per_mask)[:-1]])
        lengths = np.insert(lengths, first_run[first], 0)
        per_mask = per_mask + first.astype(np.int64)
    return lengths, per_mask, h, w


def _compress(counts: np.ndarray, per_mask: np.ndarray) -> list[str]:
    """``rleToString`` of every mask at once: counts concatenated -> one ASCII string per mask."""
    if counts.size == 0:
        return [""] * len(per_mask)
    offsets = np.concatenate([[0], np.cumsum(per_mask)[:-1]])
    local = np.arange(counts.size) - np.repeat(offsets, per_mask)
    before = np.zeros_like(counts)
    before[2:] = counts[:-2]
    x = counts - np.where(local > 2, before, 0)
    # characters per value: the fewest 5-bit groups holding x in two's complement
    v = np.where(x >= 0, x, ~x)
    nchar = np.ones(x.size, np.int64)
    for k in range(1, _MAX_CHARS):
        over = v >= (np.int64(1) << np.int64(5 * k - 1))
        if not over.any():
            break
        nchar += over
    groups = np.arange(int(nchar.max()), dtype=np.int64)
    chunks = (x[:, None] >> (5 * groups)[None, :]) & 0x1F
    chunks |= np.where(groups[None, :] < (nchar[:, None] - 1), 0x20, 0)
    chars = (chunks + 48).astype(np.uint8)[groups[None, :] < nchar[:, None]]
    text = chars.tobytes().decode("ascii")
    per_value_end = np.cumsum(nchar)
    mask_end = per_value_end[np.cumsum(per_mask) - 1].tolist()
    out, s = [], 0
    for i, e in enumerate(mask_end):
        if per_mask[i] == 0:
            out.append("")
            continue
        out.append(text[s:e])
        s = e
    return out


def _decompress(s: str | bytes) -> np.ndarray:
    """``rleFrString``: a compressed counts string -> int64 run lengths."""
    b = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, np.int64)
    if (b < 0).any() or (b > 63).any():
        raise ValueError("not a COCO compressed RLE string (character outside '0'..'o')")
    last = (b & 0x20) == 0
    if not last[-1]:
        raise ValueError("truncated COCO compressed RLE string")
    ends = np.flatnonzero(last)
    value_of = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(b.size) - starts[value_of]
    x = np.zeros(ends.size, np.int64)
    np.add.at(x, value_of, (b & 0x1F) << (5 * k))
    nchar = ends - starts + 1
    neg = (b[ends] & 0x10) != 0
    x[neg] -= np.int64(1) << (5 * nchar[neg])
    # undo the differences: counts[i] = x[i] + counts[i - 2] for i > 2
    c = x.copy()
    if c.size > 3:
        c[3::2] = np.cumsum(x[3::2]) + x[1]
    if c.size > 4:
        c[4::2] = np.cumsum(x[4::2]) + x[2]
    return c


def counts_of(rle: RLE) -> np.ndarray:
    """The run lengths of an RLE (compressed or not) as an int64 array.

    Args:
        rle: ``{"size": [h, w], "counts": str | bytes | list[int]}``.
    """
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, bytearray)):
        return _decompress(counts)
    return np.asarray(counts, dtype=np.int64).reshape(-1)


def encode_many(masks: Any, compressed: bool = True) -> list[RLE]:
    """COCO RLEs of N x H x W masks, the runs of all masks found in one vectorised pass.

    Args:
        masks: N x H x W masks (numpy array or torch tensor on any device; non-zero is foreground).
        compressed: ``True`` for COCO's compressed ``str`` counts (what ``pycocotools.mask.encode`` gives,
            decoded to text), ``False`` for count lists (segment_anything's ``mask_to_rle_pytorch``).

    Returns:
        N dicts ``{"size": [h, w], "counts": str | list[int]}``.
    """
    coco = _pycocotools() if compressed else None
    if coco is not None and not _on_accelerator(masks):
        m = np.asarray(masks.cpu() if hasattr(masks, "cpu") else masks)
        if m.ndim != 3:
            raise ValueError(f"expected N x H x W masks, got shape {m.shape}")
        if len(m) and m.shape[1] * m.shape[2]:
            out = coco.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8, copy=False)))
            return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in out]
    counts, per_mask, h, w = _runs(masks)
    if compressed:
        texts = _compress(counts, per_mask)
        return [{"size": [h, w], "counts": t} for t in texts]
    pieces = np.split(counts, np.cumsum(per_mask)[:-1]) if len(per_mask) else []
    return [{"size": [h, w], "counts": p.tolist()} for p in pieces]


def _on_accelerator(masks: Any) -> bool:
    device = getattr(masks, "device", None)
    return device is not None and getattr(device, "type", "cpu") != "cpu"


def encode(mask: Any, compressed: bool = True) -> RLE:
    """COCO RLE of one H x W mask.

    Args:
        mask: H x W mask (bool or any non-zero foreground; numpy array or torch tensor).
        compressed: ``True`` for COCO's compressed string counts, ``False`` for a count list.

    Returns:
        ``{"size": [h, w], "counts": str | list[int]}``.
    """
    try:
        import torch

        is_torch = isinstance(mask, torch.Tensor)
    except ImportError:  # pragma: no cover
        is_torch = False
    m = mask if is_torch else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {tuple(m.shape)}")
    return encode_many(m[None], compressed=compressed)[0]


def _size(rle: RLE) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"not an RLE (expected a 'size': [h, w] entry): {str(rle)[:80]}") from None
    return h, w


def decode(rle: RLE) -> np.ndarray:
    """H x W bool mask of a COCO RLE (compressed ``str`` / ``bytes`` or uncompressed count list).

    Args:
        rle: ``{"size": [h, w], "counts": ...}``.
    """
    h, w = _size(rle)
    counts = counts_of(rle)
    if (counts < 0).any():
        raise ValueError("RLE has a negative run length")
    if int(counts.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h} x {w} = {h * w}")
    vals = np.zeros(counts.size, bool)
    vals[1::2] = True
    return np.repeat(vals, counts).reshape(w, h).T.copy()


def decode_many(rles: list[RLE], height: int | None = None, width: int | None = None) -> np.ndarray:
    """N x H x W bool masks of N RLEs of one size.

    Args:
        rles: RLE dicts (any mix of compressed and uncompressed counts).
        height: mask height, used when ``rles`` is empty (else read from the RLEs).
        width: mask width, used when ``rles`` is empty.
    """
    if not rles:
        if height is None or width is None:
            raise ValueError("decode_many of no RLEs needs height and width")
        return np.zeros((0, height, width), bool)
    coco = _pycocotools()
    sizes = {tuple(_size(r)) for r in rles}
    if coco is not None and len(sizes) == 1 and all(isinstance(r["counts"], (str, bytes)) for r in rles):
        h, w = sizes.pop()
        if h * w:
            enc = [
                {
                    "size": [h, w],
                    "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"],
                }
                for r in rles
            ]
            return coco.decode(enc).transpose(2, 0, 1).astype(bool)
    return np.stack([decode(r) for r in rles])


def area(rle: RLE) -> int:
    """Number of foreground pixels of an RLE (``pycocotools.mask.area``).

    Args:
        rle: ``{"size": [h, w], "counts": ...}``.
    """
    return int(counts_of(rle)[1::2].sum())


def to_bbox(rle: RLE) -> list[float]:
    """Bounding box ``[x, y, w, h]`` of an RLE's foreground, as ``pycocotools.mask.toBbox`` (zeros when
    empty).

    Args:
        rle: ``{"size": [h, w], "counts": ...}``.
    """
    h, _ = _size(rle)
    counts = counts_of(rle)
    ends = np.cumsum(counts)
    starts = ends - counts
    on = np.arange(counts.size) % 2 == 1
    on &= counts > 0
    if not on.any() or h == 0:
        return [0.0, 0.0, 0.0, 0.0]
    first, last = starts[on], ends[on] - 1
    x0, y0 = first // h, first % h
    x1, y1 = last // h, last % h
    xs, xe = int(x0.min()), int(x1.max())
    spans = x1 > x0  # a run over a column break touches the bottom and the top row
    if spans.any():
        ys, ye = 0, h - 1
    else:
        ys, ye = int(y0.min()), int(y1.max())
    return [float(xs), float(ys), float(xe - xs + 1), float(ye - ys + 1)]
