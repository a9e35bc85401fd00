"""Data recipes of Dhungana and Bista: synthetic defects, box -> mask, texture mosaics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lvlm.data.defects import (
    KINDS,
    SyntheticDefects,
    box_to_mask,
    boxes_to_masks,
    synthesize_defect,
)
from lvlm.data.mosaics import TextureMosaics, cluster_textures, make_mosaic, texture_name
from lvlm.errors import ConfigError, WeightsNotFoundError
from lvlm.registry import available
from lvlm.types import masks_to_boxes


@pytest.fixture(scope="module")
def carpet():
    """A colourful textured 'carpet' (every pixel saturated and away from 0 / 255)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:240, :260]
    base = np.stack(
        [120 + 60 * np.sin(xx / 7.0), 110 + 50 * np.cos(yy / 5.0), 90 + 40 * np.sin((xx + yy) / 9.0)], -1
    )
    return np.clip(base + rng.normal(0, 8, base.shape), 30, 225).astype(np.uint8)


def _segment_distance(x0, y0, x1, y1, w, h):
    yy, xx = np.mgrid[:h, :w] + 0.5
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))


def test_defects_are_deterministic_by_seed(carpet):
    for kind in KINDS:
        a, b = synthesize_defect(carpet, kind, seed=11), synthesize_defect(carpet, kind, seed=11)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.point, b.point)
        c = synthesize_defect(carpet, kind, seed=12)
        assert not np.array_equal(a.mask, c.mask)
    assert synthesize_defect(carpet, None, seed=3).kind in KINDS


@pytest.mark.parametrize("seed", range(4))
def test_masks_cover_exactly_the_altered_pixels(carpet, seed):
    h, w = carpet.shape[:2]
    for kind in KINDS:
        d = synthesize_defect(carpet, kind, seed=seed)
        changed = np.any(d.image != carpet, axis=2)
        np.testing.assert_array_equal(d.mask, changed)  # nothing altered outside the mask, all of it inside
        np.testing.assert_array_equal(d.image[~d.mask], carpet[~d.mask])
        assert d.mask[int(d.point[0, 1]), int(d.point[0, 0])]
        np.testing.assert_array_equal(d.box, masks_to_boxes(d.mask[None])[0])
        p = d.params
        if kind == "patch":
            x0, y0, x1, y1 = p["region"]
            assert 20 <= x1 - x0 <= 60 and 20 <= y1 - y0 <= 60
            region = box_to_mask([x0, y0, x1, y1], h, w)
            assert not (d.mask & ~region).any()
            assert d.mask.sum() >= 0.99 * region.sum()  # a textured carpet changes under any patch
            if p["mode"] == "darken":
                assert 0.4 <= p["amount"] <= 0.7
                src = carpet[
                    p["source"][1] : p["source"][1] + y1 - y0, p["source"][0] : p["source"][0] + x1 - x0
                ]
                np.testing.assert_array_equal(
                    d.image[y0:y1, x0:x1], np.round(src * p["amount"]).astype(np.uint8)
                )
        elif kind == "scar":
            assert 2 <= p["width"] <= 5 and max(p["colour"]) <= 50
            dist = _segment_distance(*p["start"], *p["end"], w, h)
            assert dist[d.mask].max() <= p["width"] / 2 + 1.5
            assert (d.image[d.mask] == np.array(p["colour"], np.uint8)).all()
        else:
            assert 40 <= p["radius"] <= 100 and 20 <= abs(p["hue_shift_deg"]) <= 50
            cx, cy = p["centre"]
            yy, xx = np.mgrid[:h, :w] + 0.5
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= p["radius"] ** 2
            assert not (d.mask & ~disc).any() and d.mask.sum() >= 0.9 * disc.sum()


def test_defects_dataset(carpet, tmp_path):
    from PIL import Image

    assert {"defects", "mosaics"} <= set(available("dataset"))
    ds = SyntheticDefects(images=[carpet, carpet[:, ::-1].copy()], n=7, seed=5)
    assert len(ds) == 7 and ds.ids()[:3] == ["defect00000_patch", "defect00001_scar", "defect00002_stain"]
    s3 = ds[3]
    samples = list(ds)
    np.testing.assert_array_equal(samples[3].mask, s3.mask)  # random access == iteration
    np.testing.assert_array_equal(
        SyntheticDefects(images=[carpet, carpet[:, ::-1].copy()], n=7, seed=5)[3].image, s3.image
    )
    assert [s.tags["defect"] for s in samples] == [KINDS[i % 3] for i in range(7)]
    # MVTec layout: ROOT/carpet/train/good
    good = tmp_path / "carpet" / "train" / "good"
    good.mkdir(parents=True)
    Image.fromarray(carpet).save(good / "000.png")
    ds2 = SyntheticDefects(root=str(tmp_path), n=2, kinds=["stain"], size=128)
    assert ds2[0].image.shape == (128, 128, 3) and ds2[1].tags == {"defect": "stain"}
    from lvlm.data.base import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="Expected layout"):
        SyntheticDefects(root=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="unknown kinds"):
        SyntheticDefects(images=[carpet], kinds=["crack"])


def test_box_to_mask():
    m = box_to_mask([2, 3, 7, 5], 8, 10)
    assert m.sum() == 5 * 2 and m[3:5, 2:7].all()
    np.testing.assert_array_equal(masks_to_boxes(m[None])[0], [2, 3, 7, 5])
    ms = boxes_to_masks([[0, 0, 2, 2], [1.4, 1.4, 3.6, 3.6]], 4, 4)
    assert ms.shape == (2, 4, 4) and ms[0].sum() == 4 and ms[1].sum() == 9  # pixel centres 1.5, 2.5, 3.5
    with pytest.raises(ValueError):
        boxes_to_masks([[3, 0, 1, 2]], 4, 4)


# ---------------------------------------------------------------------------------------------- mosaics
FAMILIES = [(200, 50, 50), (50, 190, 60), (50, 60, 200), (210, 210, 60)]


@pytest.fixture(scope="module")
def textures():
    rng = np.random.default_rng(1)
    out = []
    for base in FAMILIES:
        for _ in range(4):
            t = np.asarray(base) + rng.normal(0, 12, (32, 32, 3)) + rng.normal(0, 10, 3)
            out.append(np.clip(t, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def hard(textures):
    return TextureMosaics(
        images=textures,
        n=3,
        mode="hard",
        k=4,
        tile=64,
        features="random",
        device="cpu",
        feature_size=64,
        seed=0,
    )


def test_make_mosaic_quadrants(textures):
    img, masks, points = make_mosaic(textures[:4], tile=64)
    assert img.shape == (128, 128, 3) and masks.shape == (4, 128, 128)
    assert (masks.sum(0) == 1).all()  # the quadrants partition the image
    np.testing.assert_array_equal(
        masks_to_boxes(masks), [[0, 0, 64, 64], [64, 0, 128, 64], [0, 64, 64, 128], [64, 64, 128, 128]]
    )
    assert points.tolist() == [[32, 32], [96, 32], [32, 96], [96, 96]]
    assert texture_name("wood/african-blackwood-60x60.jpg") == "african blackwood"


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16)) * 5
    feats = np.repeat(centres, 6, axis=0) + rng.normal(0, 0.1, (24, 16))
    labels = cluster_textures(feats, k=4, seed=0)
    assert len(set(labels.tolist())) == 4
    for f in range(4):
        assert len(set(labels[6 * f : 6 * f + 6].tolist())) == 1
    np.testing.assert_array_equal(labels, cluster_textures(feats, k=4, seed=0))


def test_mosaic_modes(textures, hard):
    assert hard.clusters.shape == (16,) and hard.clusters.max() < 4
    samples = list(hard)
    assert len(samples) == 12 and samples[0].image.shape == (128, 128, 3)
    for i in range(3):
        quad = samples[4 * i : 4 * i + 4]
        assert len({s.tags["cluster"] for s in quad}) == 1  # hard: one cluster
        assert len({s.tags["texture"] for s in quad}) == 4  # four different textures
        assert all(s.image is quad[0].image for s in quad)  # one image, four masks
    std = TextureMosaics(
        images=textures,
        n=3,
        mode="standard",
        k=4,
        tile=64,
        features="random",
        device="cpu",
        feature_size=64,
        seed=0,
    )
    for i in range(3):
        assert len({s.tags["cluster"] for s in list(std)[4 * i : 4 * i + 4]}) == 4  # standard: four clusters
    again = TextureMosaics(
        images=textures,
        n=3,
        mode="standard",
        k=4,
        tile=64,
        features="random",
        device="cpu",
        feature_size=64,
        seed=0,
    )
    assert [std.choose(i) for i in range(3)] == [again.choose(i) for i in range(3)]
    np.testing.assert_array_equal(std[5].image, again[5].image)


def test_mosaic_imagenet_weights_fail_fast_offline(textures, monkeypatch):
    monkeypatch.setenv("LVLM_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
        TextureMosaics(images=textures, n=1, k=4, features="imagenet", device="cpu")
    assert time.perf_counter() - t0 < 10
