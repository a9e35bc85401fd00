"""Intensity normalisation in lvlm.io.load_image: percentile / min-max / none, 16-bit kept at full
precision."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lvlm.errors import ImageError
from lvlm.io import load_image, normalize_intensity


def sixteen_bit(seed: int = 0) -> np.ndarray:
    """A 16-bit image whose signal lives in 1000..1400 with a few hot pixels at 60000: a min-max conversion to
    uint8 crushes the signal into 2 grey levels; percentiles keep it."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1000, 1400, size=(64, 80)).astype(np.uint16)
    a[rng.integers(0, 64, 5), rng.integers(0, 80, 5)] = 60000
    return a


def reference(a: np.ndarray, lo_p: float, hi_p: float) -> np.ndarray:
    lo, hi = np.percentile(a.astype(np.float64), [lo_p, hi_p])
    return np.round(np.clip((a.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def test_percentile_on_16_bit_array_matches_numpy():
    a = sixteen_bit()
    out = load_image(a, normalize="percentile")
    assert out.dtype == np.uint8 and out.shape == (64, 80, 3)
    np.testing.assert_array_equal(out[..., 0], reference(a, 0.5, 99.5))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert len(np.unique(out)) > 200  # the signal spread over the grey levels
    assert len(np.unique(load_image(a))) <= 4  # the default (min-max) conversion: 3 levels + the hot pixels
    np.testing.assert_array_equal(
        load_image(a, normalize="percentile", percentiles=(2, 98))[..., 0], reference(a, 2, 98)
    )


def test_16_bit_files_keep_full_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = sixteen_bit(1)
    tifffile.imwrite(tmp_path / "a.tif", a)
    Image.fromarray(a).save(tmp_path / "a.png")  # PIL mode I;16
    for name in ("a.tif", "a.png"):
        out = load_image(tmp_path / name, normalize="percentile")
        np.testing.assert_array_equal(out[..., 0], reference(a, 0.5, 99.5), err_msg=name)


def test_minmax_and_none():
    a = sixteen_bit(2)
    f = a.astype(np.float64)
    mm = np.round((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(load_image(a, normalize="minmax")[..., 0], mm)
    np.testing.assert_array_equal(load_image(a, normalize="none")[..., 0], mm)  # today's conversion
    u8 = np.random.default_rng(3).integers(100, 150, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(u8), u8)  # uint8 untouched without normalisation
    stretched = load_image(u8, normalize="minmax")
    assert stretched.min() == 0 and stretched.max() == 255


def test_normalize_intensity_edges_and_errors():
    np.testing.assert_array_equal(normalize_intensity(np.full((4, 4), 7, np.uint16)), np.zeros((4, 4)))
    x = np.array([[0.0, np.nan], [1.0, 2.0]])
    out = normalize_intensity(x, "minmax")
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0]])
    with pytest.raises(ImageError, match="normalize"):
        load_image(np.zeros((4, 4), np.uint8), normalize="zscore")
    with pytest.raises(ImageError, match="percentiles"):
        load_image(np.zeros((4, 4), np.uint8), normalize="percentile", percentiles=(99, 1))
