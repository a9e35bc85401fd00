"""Synthetic defects injected into defect-free images (Dhungana and Bista), and box -> mask conversion.

Three defect kinds, each returned with its mask and a point / box prompt, deterministic by seed:

- ``patch`` (holes, contamination): a random 20-60 px rectangle of the image is copied elsewhere,
  darkened to 40-70 % brightness or with Gaussian noise (sigma 15-40) added;
- ``scar`` (cuts, thread pulls): a 2-5 px thick straight line of a dark colour (each channel 0-50),
  from a random start point, random direction, 15-60 % of the image's shorter side long;
- ``stain`` (colour defects): a disc of radius 40-100 px whose hue is shifted by 20-50 degrees
  (either direction), blended over the image at 40 % opacity.

The mask of a defect is exactly the set of pixels the operation changed (a black pixel under a
darkening, or a grey pixel under a hue shift, stays as it was and is not marked), so the mask and the
altered pixels always agree. The point prompt is the mask's centre of mass snapped inside it.

The ``defects`` dataset draws ``n`` such samples from a folder of defect-free images (e.g. MVTec AD
``carpet/train/good``) and yields them as :class:`~lvlm.types.Sample` objects for ``lvlm train sam-decoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample, masks_to_boxes
from .base import IMAGE_EXTS, Dataset, not_found

KINDS = ("patch", "scar", "stain")
PATCH_SIZE = (20, 60)  # px, each side
DARKEN = (0.4, 0.7)  # brightness factor
NOISE_SIGMA = (15.0, 40.0)
SCAR_WIDTH = (2, 5)  # px
SCAR_COLOUR_MAX = 50
SCAR_LENGTH = (0.15, 0.6)  # of the shorter image side
STAIN_RADIUS = (40, 100)  # px
STAIN_HUE_DEG = (20.0, 50.0)
STAIN_OPACITY = 0.4
MIN_PIXELS = 10  # a defect changing fewer pixels is drawn again


def boxes_to_masks(boxes: np.ndarray | Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """N x H x W bool masks of N xyxy boxes (right / bottom exclusive): a pixel is in a box when its centre
    is.

    For box-only annotations (e.g. detection-style datasets) that a mask-trained decoder must learn from.

    Args:
        boxes: N x 4 xyxy boxes (or one box).
        height: mask height in pixels.
        width: mask width in pixels.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
        raise ValueError("boxes must be xyxy with x0 <= x1 and y0 <= y1")
    cx = np.arange(width) + 0.5
    cy = np.arange(height) + 0.5
    inx = (cx[None, :] >= b[:, 0:1]) & (cx[None, :] < b[:, 2:3])  # N x W
    iny = (cy[None, :] >= b[:, 1:2]) & (cy[None, :] < b[:, 3:4])  # N x H
    return iny[:, :, None] & inx[:, None, :]


def box_to_mask(box: np.ndarray | Sequence[float], height: int, width: int) -> np.ndarray:
    """H x W bool mask of one xyxy box (or the union of several).

    Args:
        box: one xyxy box, or N x 4 boxes.
        height: mask height in pixels.
        width: mask width in pixels.
    """
    return boxes_to_masks(box, height, width).any(axis=0)


@dataclass
class Defect:
    """One synthetic defect: the altered image, its mask, the prompts and the drawn parameters."""

    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W bool: exactly the changed pixels
    kind: str
    point: np.ndarray  # 1 x 2 (x, y) centre of mass, inside the mask
    box: np.ndarray  # (4,) xyxy
    params: dict[str, Any] = field(default_factory=dict)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
    return image


def add_patch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A 20-60 px patch of the image pasted elsewhere, darkened or noised (see the module doc).

    Args:
        image: the defect-free H x W x 3 uint8 image (not changed).
        rng: the random generator of the draw.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    ph = int(min(h, rng.integers(PATCH_SIZE[0], PATCH_SIZE[1] + 1)))
    pw = int(min(w, rng.integers(PATCH_SIZE[0], PATCH_SIZE[1] + 1)))
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    dy, dx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = image[sy : sy + ph, sx : sx + pw].astype(np.float64)
    if rng.random() < 0.5:
        mode, amount = "darken", float(rng.uniform(*DARKEN))
        patch = patch * amount
    else:
        mode, amount = "noise", float(rng.uniform(*NOISE_SIGMA))
        patch = patch + rng.normal(0.0, amount, patch.shape)
    out = image.copy()
    out[dy : dy + ph, dx : dx + pw] = np.clip(np.round(patch), 0, 255).astype(np.uint8)
    return out, {"mode": mode, "amount": amount, "source": (sx, sy), "region": (dx, dy, dx + pw, dy + ph)}


def add_scar(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A thin dark straight line (2-5 px, each channel 0-50) from a random point in a random direction.

    Args:
        image: the defect-free H x W x 3 uint8 image (not changed).
        rng: the random generator of the draw.
    """
    from PIL import Image, ImageDraw

    image = _check_image(image)
    h, w = image.shape[:2]
    width = int(rng.integers(SCAR_WIDTH[0], SCAR_WIDTH[1] + 1))
    colour = rng.integers(0, SCAR_COLOUR_MAX + 1, size=3).astype(np.uint8)
    x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    angle = float(rng.uniform(0, 2 * np.pi))
    length = float(rng.uniform(*SCAR_LENGTH)) * min(h, w)
    x1 = float(np.clip(x0 + length * np.cos(angle), 0, w - 1))
    y1 = float(np.clip(y0 + length * np.sin(angle), 0, h - 1))
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).line([(x0, y0), (x1, y1)], fill=1, width=width)
    line = np.asarray(canvas, dtype=bool)
    out = image.copy()
    out[line] = colour
    return out, {"width": width, "colour": tuple(int(c) for c in colour), "start": (x0, y0), "end": (x1, y1)}


def add_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A disc (radius 40-100 px) with its hue shifted by 20-50 degrees, blended at 40 % opacity.

    Args:
        image: the defect-free H x W x 3 uint8 image (not changed).
        rng: the random generator of the draw.
    """
    from PIL import Image

    image = _check_image(image)
    h, w = image.shape[:2]
    radius = int(rng.integers(STAIN_RADIUS[0], STAIN_RADIUS[1] + 1))
    cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    shift = float(rng.uniform(*STAIN_HUE_DEG)) * float(rng.choice([-1.0, 1.0]))
    yy, xx = np.mgrid[:h, :w]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + round(shift * 256 / 360)) % 256).astype(np.uint8)
    shifted = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")).astype(np.float64)
    blend = (1 - STAIN_OPACITY) * image.astype(np.float64) + STAIN_OPACITY * shifted
    out = image.copy()
    out[disc] = np.clip(np.round(blend[disc]), 0, 255).astype(np.uint8)
    return out, {"centre": (cx, cy), "radius": radius, "hue_shift_deg": shift, "opacity": STAIN_OPACITY}


_MAKERS = {"patch": add_patch, "scar": add_scar, "stain": add_stain}


def synthesize_defect(
    image: np.ndarray, kind: str | None = None, seed: int | Sequence[int] | np.random.Generator = 0
) -> Defect:
    """One defect of ``kind`` (random among :data:`KINDS` when None) in ``image``, deterministic by ``seed``.

    Draws again (up to 20 times) when a draw changes fewer than ``MIN_PIXELS`` pixels (e.g. a stain on a
    grey region); raises ValueError when no draw alters the image.

    Args:
        image: the defect-free H x W x 3 uint8 image (not changed).
        kind: ``patch``, ``scar``, ``stain``, or None for a random one.
        seed: a seed, a seed sequence or a ``numpy`` random generator.
    """
    from .prompts import center_point

    image = _check_image(image)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if kind is None:
        kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind not in _MAKERS:
        raise ConfigError(f"unknown defect kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    best = None
    for _ in range(20):
        out, params = _MAKERS[kind](image, rng)
        mask = np.any(out != image, axis=2)
        if best is None or mask.sum() > best[1].sum():
            best = (out, mask, params)
        if mask.sum() >= MIN_PIXELS:
            break
    out, mask, params = best
    if not mask.any():
        raise ValueError(f"a {kind} defect leaves this image unchanged (uniform or grey image?)")
    return Defect(out, mask, kind, center_point(mask), masks_to_boxes(mask[None])[0], params)


URL = "any folder of defect-free images, e.g. MVTec AD carpet/train/good (https://www.mvtec.com/company/research/datasets/mvtec-ad)"
LAYOUT = """\
  ROOT/*.png|jpg|...              defect-free images, or
  ROOT/train/good/*.png           an MVTec AD category folder (ROOT/<category>/train/good also works)"""


def _good_images(root: Path, category: str) -> list[Path]:
    for folder in (root / category / "train" / "good", root / "train" / "good", root):
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if files:
                return files
    return []


@register(
    "dataset",
    "defects",
    description="synthetic patch / scar / stain defects on defect-free images (Dhungana and Bista)",
    source="generated from your defect-free images (deterministic by seed)",
)
class SyntheticDefects(Dataset):
    """``n`` synthetic defects (kinds cycled patch, scar, stain) on images from ``root`` (or ``images``).

    Sample ``i`` is drawn with ``numpy.random.default_rng([seed, i])``: the same seed gives the same
    images, masks and prompts in any order of access. ``size``: resize the base images to ``size`` x
    ``size`` first (defect sizes stay in pixels). Tags: ``{"defect": kind}``; ``box``: the defect's box.

    Args:
        root: a folder of defect-free images (MVTec's ``<category>/train/good`` when present), or None with
            ``images``.
        images: image paths or arrays to use instead of ``root``.
        n: the number of samples.
        seed: the random seed.
        kinds: the defect kinds, cycled over the samples.
        size: resize the base images to ``size`` x ``size`` first, or None to keep them.
        category: the MVTec category whose ``train/good`` folder is looked for under ``root``.
        prompt: the text prompt of every sample.
    """

    name = "defects"

    def __init__(
        self,
        root: str | None = None,
        images: Sequence[Any] | None = None,
        n: int = 500,
        seed: int = 0,
        kinds: Sequence[str] = KINDS,
        size: int | None = None,
        category: str = "carpet",
        prompt: str = "defect",
    ):
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ConfigError(f"defects: unknown kinds {bad}; valid kinds: {', '.join(KINDS)}")
        if images is None:
            if root is None:
                raise ConfigError("defects needs root= (a folder of defect-free images) or images=")
            files = _good_images(Path(root).expanduser(), category)
            if not files:
                raise not_found("defects", root, "no defect-free image", LAYOUT, URL)
            images = files
        if len(images) == 0:
            raise ConfigError("defects: no base image given")
        if n < 1:
            raise ConfigError(f"defects: n={n}, need at least 1 sample")
        self.images, self.kinds, self.seed, self.size, self.prompt = list(images), kinds, seed, size, prompt
        self._last: tuple[int, np.ndarray] | None = None
        self._finish(list(range(n)), None, seed)

    def _base(self, j: int) -> np.ndarray:
        if self._last is not None and self._last[0] == j:
            return self._last[1]
        from PIL import Image

        from ..io import load_image

        img = load_image(self.images[j])
        if self.size:
            img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BILINEAR))
        self._last = (j, img)
        return img

    def defect(self, i: int) -> Defect:
        """Defect ``i`` (with its point prompt and parameters).

        Args:
            i: the sample index.
        """
        rng = np.random.default_rng([self.seed, i])
        base = self._base(int(rng.integers(len(self.images))))
        return synthesize_defect(base, self.kinds[i % len(self.kinds)], rng)

    def _load(self, i: int) -> Sample:
        d = self.defect(i)
        return Sample(
            id=f"defect{i:05d}_{d.kind}",
            image=d.image,
            prompt=self.prompt,
            mask=d.mask,
            tags={"defect": d.kind},
            prompts=[self.prompt, f"{d.kind} defect", "anomaly"],
            box=d.box,
        )

    def ids(self) -> list[str]:
        return [f"defect{i:05d}_{self.kinds[i % len(self.kinds)]}" for i in self.items]
