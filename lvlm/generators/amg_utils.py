"""Batched mask utilities of the everything-mode engine (:mod:`lvlm.generators.sam_fast`), the batched
counterparts of ``segment_anything.utils.amg`` (same results, on N masks at once, on the masks' device):

- :func:`boxes_from_projections`: ``batched_mask_to_box`` from row / column occupancy;
- :func:`remove_small_regions_batched`: ``remove_small_regions`` (holes, then islands) on a stack of masks;
- :func:`components` / :func:`label_components`: 8-connected components of a stack (scipy or torch).

Pure functions of tensors; tests/test_fast_amg.py pins each against segment_anything's function of the same
job (``batched_mask_to_box``, ``remove_small_regions``) or scipy. ``Sam.postprocess_masks`` without the
upsampled rows / columns the crop drops is :func:`lvlm.models.mask_decoding.sam_postprocess_masks`.
"""

from __future__ import annotations

import numpy as np
import torch


def boxes_from_projections(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``segment_anything.utils.amg.batched_mask_to_box`` from a mask's row and column occupancy (N x H and
    N x W bool): XYXY int64 boxes with inclusive right / bottom edges, [0, 0, 0, 0] for an empty mask.

    Args:
        rows: N x H bool row occupancy.
        cols: N x W bool column occupancy.
    """

    def edges(occ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(occ.shape[-1], device=occ.device)
        last = torch.where(occ, idx, 0).amax(-1)
        first = torch.where(occ, idx, occ.shape[-1]).amin(-1)
        return first, last

    if rows.numel() == 0 or cols.numel() == 0:
        return torch.zeros(rows.shape[0], 4, dtype=torch.long, device=rows.device)
    top, bottom = edges(rows)
    left, right = edges(cols)
    out = torch.stack([left, top, right, bottom], dim=-1)
    return out * rows.any(-1, keepdim=True)


def _min3x3(x: torch.Tensor) -> torch.Tensor:
    """Minimum over each pixel's 3x3 neighbourhood (separable; edges see only in-image pixels)."""
    r = x.clone()
    r[:, :, 1:] = torch.minimum(r[:, :, 1:], x[:, :, :-1])
    r[:, :, :-1] = torch.minimum(r[:, :, :-1], x[:, :, 1:])
    c = r.clone()
    c[:, 1:] = torch.minimum(c[:, 1:], r[:, :-1])
    c[:, :-1] = torch.minimum(c[:, :-1], r[:, 1:])
    return c


def label_components(fg: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of a batch of N x H x W bool masks, computed on their device.

    Each foreground pixel gets the flat index (into the N x H x W batch) of its component's first pixel in
    raster order; background pixels keep their own index. Label propagation (3x3 minimum) with hooking of
    the roots (union by smaller label) and pointer jumping: a few tens of whole-tensor passes for mask-like
    shapes, whatever their size, and no per-mask or per-component loop.

    Args:
        fg: N x H x W bool masks.
    """
    n, h, w = fg.shape
    numel = n * h * w
    labels = torch.arange(numel, device=fg.device).view(n, h, w)
    big = torch.tensor(numel, device=fg.device)
    flat = labels.view(-1)
    while True:
        m = _min3x3(torch.where(fg, labels, big))
        upd = fg & (m < labels)
        if not bool(upd.any()):
            return labels
        flat.scatter_reduce_(0, labels[upd], m[upd], reduce="amin")  # hook: the roots adopt the smaller label
        torch.minimum(labels, torch.where(fg, m, labels), out=labels)
        while True:  # pointer jumping until every pixel points at a root
            nxt = flat.gather(0, flat)
            if torch.equal(nxt, flat):
                break
            flat.copy_(nxt)


def remove_small_regions_batched(
    masks: torch.Tensor, area_thresh: int, chunk_pixels: int = 2**24, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``segment_anything.utils.amg.remove_small_regions`` on N masks at once: fill holes, then drop islands,
    smaller than ``area_thresh`` (8-connectivity). Returns the new masks and per mask whether it changed.

    Components come from :func:`components` (``backend``: ``"auto"`` = one ``scipy.ndimage.label`` call over
    the whole stack on the CPU, :func:`label_components` on a GPU; ``"torch"`` or ``"scipy"``): no loop over
    masks either way.

    Args:
        masks: N x H x W bool masks.
        area_thresh: holes and islands smaller than this many pixels are removed.
        chunk_pixels: mask pixels processed at once.
        backend: ``auto``, ``torch`` or ``scipy`` (see :func:`components`).
    """
    n, h, w = masks.shape
    if n == 0:
        return masks.clone(), torch.zeros(0, dtype=torch.bool, device=masks.device)
    per = max(1, chunk_pixels // max(1, h * w))
    outs, changed = [], []
    for s in range(0, n, per):
        m = masks[s : s + per]
        m, ch1 = _fill_small(m, area_thresh, holes=True, backend=backend)
        m, ch2 = _fill_small(m, area_thresh, holes=False, backend=backend)
        outs.append(m)
        changed.append(ch1 | ch2)
    return torch.cat(outs), torch.cat(changed)


def _fill_small(
    mask: torch.Tensor, area_thresh: int, holes: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    work = ~mask if holes else mask
    labels, size_px = components(work, backend)
    small_px = work & (size_px < area_thresh)
    changed = small_px.flatten(1).any(1)
    if holes:
        return mask | small_px, changed
    out = work & ~small_px
    all_small = changed & ~out.flatten(1).any(1)  # every island small: keep the largest
    if bool(all_small.any()):
        idx = torch.nonzero(all_small).flatten()
        best = size_px[idx].flatten(1).argmax(1)  # first pixel of maximal size in raster order
        root = labels[idx].flatten(1).gather(1, best[:, None])
        out[idx] = labels[idx] == root.view(-1, 1, 1)
    return out, changed


_STACK_8 = np.zeros((3, 3, 3), bool)
_STACK_8[1] = True  # 8-connectivity within each mask of an N x H x W stack, none across masks


def components(fg: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of N x H x W bool masks: (labels, size of each pixel's component).

    ``labels`` are equal exactly within a component (int64; arbitrary outside ``fg``), ``size`` is 0 outside
    ``fg``. ``backend``: ``"scipy"`` (one ``scipy.ndimage.label`` call on the stack, on the CPU), ``"torch"``
    (:func:`label_components`, on the masks' device) or ``"auto"`` (scipy for CPU tensors, else torch).

    Args:
        fg: N x H x W bool masks.
        backend: ``auto``, ``torch`` or ``scipy``.
    """
    if backend not in ("auto", "torch", "scipy"):
        raise ValueError(f"backend={backend!r}; valid: auto, torch, scipy")
    if backend == "scipy" or (backend == "auto" and fg.device.type == "cpu"):
        from scipy import ndimage

        lab, k = ndimage.label(
            fg.cpu().numpy(), structure=_STACK_8
        )  # numbered in raster order, 0 = not in fg
        sizes = np.bincount(lab.ravel(), minlength=k + 1)
        sizes[0] = 0
        labels = torch.from_numpy(lab.astype(np.int64)).to(fg.device)
        return labels, torch.from_numpy(sizes[lab]).to(fg.device)
    labels = label_components(fg)
    flat = labels.view(-1)
    sizes = torch.bincount(flat[fg.reshape(-1)], minlength=flat.numel())
    return labels, torch.where(fg, sizes[labels], 0)
