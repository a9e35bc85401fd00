"""Reading and checking images; writing masks and overlays (RLE lives in :mod:`lvlm.rle`).

Every image entering lvlm goes through :func:`load_image`, which returns an H x W x 3 uint8 RGB
array whatever came in (path, PIL image, array; greyscale, RGBA, palette, 16-bit, CMYK,
EXIF-rotated), or raises :class:`~lvlm.errors.ImageError` with the reason.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray

#: Largest image (pixels) accepted; override with the LVLM_MAX_PIXELS environment variable.
DEFAULT_MAX_PIXELS = 16384 * 16384


def max_pixels() -> int:
    return int(os.environ.get("LVLM_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a non-uint8 array to uint8: integers by their dtype's range when they use it, else min-max."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0  # a float image in [0, 1]
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    a = np.where(finite, a, lo)
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


#: intensity normalisations of :func:`load_image` (``normalize``)
NORMALIZE_MODES = ("none", "percentile", "minmax")
#: default percentiles of ``normalize="percentile"`` (as stardist / csbdeep, cellpose and micro-sam use)
DEFAULT_PERCENTILES = (0.5, 99.5)


def check_normalize(
    normalize: Any, percentiles: Any = DEFAULT_PERCENTILES
) -> tuple[str, tuple[float, float]]:
    """``(mode, (low, high))`` of a ``normalize`` option, or ImageError naming the valid values.

    Args:
        normalize: ``none``, ``percentile`` or ``minmax`` (None means ``none``).
        percentiles: (low, high) percentiles in [0, 100] for ``percentile``.
    """
    mode = "none" if normalize is None else normalize
    if mode not in NORMALIZE_MODES:
        raise ImageError(f"normalize={normalize!r}: expected one of {', '.join(NORMALIZE_MODES)}")
    try:
        lo, hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise ImageError(f"percentiles={percentiles!r}: expected two numbers (low, high)") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise ImageError(f"percentiles={percentiles!r}: expected 0 <= low < high <= 100")
    return mode, (lo, hi)


def normalize_intensity(
    arr: np.ndarray, normalize: str = "percentile", percentiles: Any = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Intensities of ``arr`` (any dtype, full precision) mapped to float64 [0, 1], one range for all
    channels.

    ``percentile``: ``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], with the ``percentiles`` of the
    finite values (csbdeep's ``normalize``, clipped); ``minmax``: the same with the minimum and maximum;
    ``none``: the array as float. A constant image gives zeros; non-finite values count as the low end.

    Args:
        arr: H x W (x C) array (uint8, uint16, float...).
        normalize: ``percentile``, ``minmax`` or ``none``.
        percentiles: (low, high) in [0, 100] for ``percentile``.
    """
    mode, (plo, phi) = check_normalize(normalize, percentiles)
    a = np.asarray(arr).astype(np.float64)
    if mode == "none":
        return a
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape)
    vals = a[finite]
    lo, hi = (
        (float(vals.min()), float(vals.max()))
        if mode == "minmax"
        else (float(v) for v in np.percentile(vals, [plo, phi]))
    )
    if hi <= lo:
        return np.zeros(a.shape)
    return np.clip((np.where(finite, a, lo) - lo) / (hi - lo), 0.0, 1.0)


def _normalized_uint8(arr: np.ndarray, norm: tuple[str, tuple[float, float]] | None) -> np.ndarray:
    """``arr`` as uint8: the dtype conversion of :func:`_to_uint8`, or the ``norm`` (mode, percentiles)."""
    if norm is None or norm[0] == "none":
        return _to_uint8(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return np.round(normalize_intensity(arr, *norm) * 255.0).astype(np.uint8)


def _array_to_rgb(
    arr: np.ndarray, what: str, norm: tuple[str, tuple[float, float]] | None = None
) -> np.ndarray:
    if arr.size == 0 or 0 in arr.shape[:2]:
        raise ImageError(f"{what}: image is empty (shape {arr.shape})")
    if norm is not None and norm[0] != "none":
        if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
            arr = arr[:, :, :1] if arr.shape[2] <= 2 else arr[:, :, :3]  # no alpha in the statistics
        if arr.ndim in (2, 3):
            arr = _normalized_uint8(arr, norm)
    if arr.ndim == 2:
        arr = _to_uint8(arr)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        c = arr.shape[2]
        arr = _to_uint8(arr)
        if c == 1 or c == 2:  # grey or grey + alpha
            return np.repeat(arr[:, :, :1], 3, axis=2)
        return np.ascontiguousarray(arr[:, :, :3])
    raise ImageError(f"{what}: expected an H x W or H x W x 3 (RGB) array, got shape {arr.shape}")


def _pil_to_rgb(
    img: Image.Image, what: str, norm: tuple[str, tuple[float, float]] | None = None
) -> np.ndarray:
    rgb = _pil_to_rgb_plain(img, what, norm)
    if norm is not None and norm[0] != "none" and img.mode not in _HIGH_DEPTH_MODES:
        rgb = _normalized_uint8(rgb, norm)
    return rgb


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _pil_to_rgb_plain(
    img: Image.Image, what: str, norm: tuple[str, tuple[float, float]] | None
) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001, S110  broken EXIF (any error inside PIL): keep the pixels as stored
        pass
    w, h = img.size
    if w == 0 or h == 0:
        raise ImageError(f"{what}: image is empty ({w}x{h})")
    if w * h > max_pixels():
        raise ImageError(
            f"{what}: image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels():,}; "
            "downscale it or raise the limit with LVLM_MAX_PIXELS"
        )
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        return _array_to_rgb(np.asarray(img), what, norm)  # full precision until normalised
    if mode == "RGBA" or mode == "LA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        return np.asarray(img)[:, :, :3].copy()
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img).copy()


def load_image(
    image: ImageLike, normalize: str | None = "none", percentiles: Any = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Any supported image -> H x W x 3 uint8 RGB array (raises ImageError with the reason).

    Args:
        image: a path, a PIL image or an array.
        normalize: intensity normalisation before the conversion to uint8: ``none`` (default: integers and
            floats outside [0, 1] min-max scaled, uint8 kept), ``percentile`` (the ``percentiles`` of the
            image mapped to 0 and 255, clipped: microscopy's usual choice) or ``minmax``. 16-bit and float
            images (TIFF, PIL ``I;16`` / ``I`` / ``F``) keep their full precision until normalised.
        percentiles: (low, high) for ``percentile`` (default 0.5, 99.5).
    """
    norm = check_normalize(normalize, percentiles)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, "array", norm)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, "PIL image", norm)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        what = str(path)
        if not path.exists():
            raise ImageError(f"{what}: no such file")
        if path.is_dir():
            raise ImageError(f"{what}: is a directory, not an image")
        if path.stat().st_size == 0:
            raise ImageError(f"{what}: file is empty (0 bytes)")
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(path)
            if arr is not None:
                if arr.size > max_pixels() * (arr.shape[2] if arr.ndim == 3 else 1):
                    raise ImageError(
                        f"{what}: image of shape {arr.shape} is over the limit of {max_pixels():,} pixels"
                    )
                return _array_to_rgb(arr, what, norm)
        Image.MAX_IMAGE_PIXELS = max(max_pixels(), Image.MAX_IMAGE_PIXELS or 0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    w, h = img.size
                    if w * h > max_pixels():
                        raise ImageError(
                            f"{what}: image is {w}x{h} = {w * h:,} pixels, "
                            f"over the limit of {max_pixels():,}; "
                            "downscale it or raise the limit with LVLM_MAX_PIXELS"
                        )
                    img.load()
                    return _pil_to_rgb(img, what, norm)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(
                f"{what}: not an image file PIL can read (corrupt or unsupported format)"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{what}: cannot decode image (truncated or corrupt): {exc}") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{what}: {exc}") from None
    raise ImageError(
        f"cannot read an image from {type(image).__name__}; give a path, PIL image or H x W x 3 array"
    )


def _read_tiff(path: Path) -> np.ndarray | None:
    """Read a TIFF with tifffile when it is installed (multi-page: the first page)."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        arr = tifffile.imread(str(path), key=0)
    except Exception:  # noqa: BLE001  any tifffile failure: let PIL try and report
        return None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, 2)  # planar RGB
    return arr


def load_mask(path: str | os.PathLike, instance: bool = False) -> np.ndarray:
    """Read a mask file: bool H x W (any non-zero), or the integer label image with ``instance=True``.

    Args:
        path: the mask file (PNG, TIFF, ...).
        instance: return the integer label image instead of a bool mask.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(path)
        if arr is None:
            arr = np.asarray(Image.open(path))
    else:
        try:
            with Image.open(path) as img:
                img.load()
                arr = np.asarray(img)
        except (OSError, UnidentifiedImageError) as exc:
            raise ImageError(f"{path}: cannot read mask: {exc}") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    return arr if instance else arr > 0


def image_id(image: Any, index: int = 0) -> str:
    """A file-name-safe id: the file stem for paths, ``image{index}`` otherwise.

    Args:
        image: a path, or an image array.
        index: the image's position, used when it has no file name.
    """
    if isinstance(image, (str, os.PathLike)):
        return slug(Path(image).stem, sep="_", keep_case=True) or f"image{index}"
    return f"image{index}"


_SLUG_MAX = 80


def text_hash(text: str, n: int = 6) -> str:
    """A short stable hash of a text: the first ``n`` hex digits of its SHA-1 (UTF-8).

    Args:
        text: any text.
        n: number of hex digits.
    """
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _transliterate(text: str) -> tuple[str, bool]:
    """ASCII of ``text`` (Unicode NFKD, accents dropped) and whether letters or digits were lost."""
    import unicodedata

    out, lossy = [], False
    for ch in unicodedata.normalize("NFKD", text):
        if ch.isascii():
            out.append(ch)
        elif unicodedata.combining(ch):
            continue  # an accent of the letter before it: "é" -> "e"
        elif ch.isalnum():
            lossy = True  # a letter with no ASCII form ("星", "ß")
            out.append(" ")
        else:
            out.append(" ")
    return "".join(out), lossy


def slug(text: str, sep: str = "_", keep_case: bool = False) -> str:
    """A file-name-safe form of a text: 'Segment the Crack!' -> 'segment_the_crack', 'étoile' -> 'etoile'.

    Letters are transliterated to ASCII (Unicode NFKD, accents dropped). Where that loses letters (non-Latin
    scripts: '星' -> 'h_<hash>') or the slug is cut at 80 characters, a short stable hash of the text
    (:func:`text_hash`) is appended, so texts that differ give different slugs.

    Args:
        text: the text (a prompt, a file stem).
        sep: what replaces each run of other characters.
        keep_case: keep upper-case letters (file stems); prompts are lower-cased.
    """
    ascii_text, lossy = _transliterate(text)
    t = ascii_text if keep_case else ascii_text.lower()
    t = re.sub(r"[^0-9A-Za-z]+", sep, t).strip(sep)
    if len(t) > _SLUG_MAX:
        t, lossy = t[: _SLUG_MAX - 7].rstrip(sep), True
    if lossy:
        t = f"{t}{sep}{text_hash(text)}" if t else f"h{sep}{text_hash(text)}"
    return t


def unique_slugs(texts: list[str], sep: str = "_") -> dict[str, str]:
    """One slug per distinct text, never two the same: slugs that two texts share get the text's hash.

    ('Crack' and 'crack!' both slug to 'crack': they become 'crack_<hash>' each, so neither file overwrites
    the other.)

    Args:
        texts: the texts of one run (repeats allowed).
        sep: the slug separator.
    """
    distinct = list(dict.fromkeys(texts))
    base = {t: slug(t, sep=sep) for t in distinct}
    count: dict[str, int] = {}
    for s in base.values():
        count[s] = count.get(s, 0) + 1
    return {t: (s if count[s] == 1 else f"{s}{sep}{text_hash(t)}") for t, s in base.items()}


def mask_filename(image_ident: str, prompt: str | None, prompt_slug: str | None = None) -> str:
    """``{image_id}_{prompt_slug}.png`` (``{image_id}_mask.png`` without a text prompt).

    Args:
        image_ident: the image id (:func:`image_id`).
        prompt: the text prompt, or None.
        prompt_slug: the slug to use (from :func:`unique_slugs`), else ``slug(prompt)``.
    """
    if prompt_slug is None:
        prompt_slug = slug(prompt) if prompt else "mask"
    return f"{image_ident}_{prompt_slug}.png"


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write an H x W mask as a single-channel PNG with values 0/255.

    Args:
        path: the PNG file to write (its folder is created).
        mask: an H x W mask (any non-zero value is foreground).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, mode="L").save(path)
    return path


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color=(255, 64, 32),
    alpha: float = 0.5,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
) -> np.ndarray:
    """RGB overlay of a mask (and optional boxes / points) on an image, with the mask's outline drawn.

    Args:
        image: the image (anything :func:`load_image` reads).
        mask: an H x W bool mask.
        color: the RGB colour of the mask.
        alpha: the mask's opacity.
        boxes: K x 4 xyxy boxes to draw, or None.
        points: K x 2 (or K x P x 2) points to draw, or None.
    """
    from scipy import ndimage

    img = load_image(image).astype(np.float32)
    m = np.asarray(mask, bool)
    col = np.asarray(color, np.float32)
    img[m] = (1 - alpha) * img[m] + alpha * col
    edge = m & ~ndimage.binary_erosion(m, iterations=max(1, min(m.shape) // 300))
    img[edge] = col
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if boxes is not None or points is not None:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(out)
        lw = max(1, min(m.shape) // 200)
        for b in [] if boxes is None else np.asarray(boxes).reshape(-1, 4):
            draw.rectangle([float(v) for v in b], outline=(40, 220, 40), width=lw)
        for p in [] if points is None else np.asarray(points).reshape(-1, 2):
            r = 2 * lw + 2
            draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=(40, 220, 40), outline=(0, 0, 0))
    return np.asarray(out)


def save_overlay(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, **kwargs: Any) -> Path:
    """Write :func:`overlay` of ``mask`` on ``image`` to ``path`` (its folder is created).

    Args:
        path: the image file to write.
        image: the image.
        mask: an H x W bool mask.
        **kwargs: :func:`overlay` arguments (``color``, ``alpha``, ``boxes``, ``points``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, mask, **kwargs)).save(path)
    return path
