"""Tiled everything mode (lvlm.generators.tiled): tiles, and the merge of objects cut by tile borders."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lvlm.errors import ConfigError
from lvlm.generators.tiled import TiledGenerator, tile_starts, tile_windows
from lvlm.types import Candidates


class ComponentsGenerator:
    """Fake everything-mode generator: the 8-connected components of the bright pixels of what it is given
    (a tile), so an object a tile border cuts comes back as separate pieces from each tile."""

    source = "components"

    def __init__(self):
        self.calls = []

    def generate(self, image):
        self.calls.append(image.shape[:2])
        lab, n = ndimage.label(image[..., 0] > 127, structure=np.ones((3, 3), bool))
        masks = lab[None] == np.arange(1, n + 1)[:, None, None]
        return Candidates(masks.reshape(n, *image.shape[:2]), scores=np.linspace(0.9, 0.5, n) if n else None)


def disk(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_tile_starts_by_hand():
    assert tile_starts(100, 40, 10) == [0, 30, 60]  # stride 30, the last aligned to the end (60 + 40 = 100)
    assert tile_starts(100, 50, 0) == [0, 50]
    assert tile_starts(30, 40, 10) == [0]
    assert len(tile_windows(100, 100, 40, 10)) == 9


@pytest.mark.parametrize("overlap", [0, 16])
def test_object_cut_by_tile_border_is_joined(overlap):
    h = w = 128
    # one disk across the vertical border at x = 64 (and the horizontal one at y = 64), one inside a tile
    objects = [disk(h, w, 64, 64, 12), disk(h, w, 25, 100, 8)]
    img = np.zeros((h, w, 3), np.uint8)
    for m in objects:
        img[m] = 255
    inner = ComponentsGenerator()
    gen = TiledGenerator(generator=inner, tile_size=64 + overlap // 2 if overlap else 64, overlap=overlap)
    out = gen.generate(img)
    assert len(inner.calls) == 4
    assert len(out) == 2
    for m in objects:
        best = max(float((m & c).sum() / (m | c).sum()) for c in out.masks)
        assert best == 1.0
    assert max(out.extra["pieces"].tolist()) >= 4  # the cut disk came in pieces from all four tiles


def test_touching_objects_in_different_tiles_stay_apart_with_overlap():
    h = w = 128
    img = np.zeros((h, w, 3), np.uint8)
    a, b = np.zeros((h, w), bool), np.zeros((h, w), bool)
    a[50:70, 40:63] = (
        True  # left object ends at x = 62, right one starts at x = 66: 3 px of background between
    )
    b[50:70, 66:90] = True
    img[a | b] = 255
    out = TiledGenerator(generator=ComponentsGenerator(), tile_size=72, overlap=16).generate(img)
    assert len(out) == 2
    assert {int(m.sum()) for m in out.masks} == {int(a.sum()), int(b.sum())}


def test_config_checks():
    with pytest.raises(ConfigError, match="overlap"):
        TiledGenerator(generator=ComponentsGenerator(), tile_size=64, overlap=64)
    with pytest.raises(ConfigError, match="not a mask generator"):
        TiledGenerator(generator=object())
