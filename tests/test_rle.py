"""lvlm.rle against pycocotools (the COCO reference implementation) on random and edge-case masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvlm import rle

mask_utils = pytest.importorskip("pycocotools.mask")

# pycocotools' own decode calls np.array(..., copy=False) on its RLE objects, which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(autouse=True, params=["pure", "pycocotools"])
def codec(request, monkeypatch):
    """Every test twice: with lvlm's own codec (pycocotools hidden) and with the pycocotools fast path."""
    monkeypatch.setattr(rle, "_COCO", None if request.param == "pure" else mask_utils)
    return request.param


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for shape in [(1, 1), (1, 7), (7, 1), (5, 5), (7, 5), (40, 33), (3, 64), (129, 17)]:
        h, w = shape
        out.append(np.zeros(shape, bool))
        out.append(np.ones(shape, bool))
        one = np.zeros(shape, bool)
        one[h // 2, w // 2] = True
        out.append(one)
        corner = np.zeros(shape, bool)
        corner[-1, -1] = True
        out.append(corner)
        first = np.zeros(shape, bool)
        first[0, 0] = True
        out.append(first)
        for p in (0.05, 0.5, 0.95):
            out.append(rng.random(shape) < p)
    # long runs (multi-character counts and large negative differences)
    big = np.zeros((300, 257), bool)
    big[:, 100:] = True
    big[5:9, 3] = True
    out.append(big)
    blob = np.zeros((200, 300), bool)
    blob[20:180, 40:41] = True
    blob[50:60, 200:290] = True
    out.append(blob)
    return out


def _coco(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def test_encode_matches_pycocotools():
    for m in _cases():
        assert rle.encode(m) == _coco(m), m.shape


def test_encode_many_numpy_and_torch_match_pycocotools():
    rng = np.random.default_rng(1)
    for shape in [(4, 1, 1), (6, 13, 9), (5, 64, 48)]:
        masks = rng.random(shape) < 0.4
        masks[0] = False
        masks[1] = True
        ref = [_coco(m) for m in masks]
        assert rle.encode_many(masks) == ref
        np.testing.assert_array_equal(rle.decode_many(ref), masks)
        assert rle.encode_many(torch.from_numpy(masks)) == ref
        # uncompressed counts decode to the same masks in pycocotools
        for m, r in zip(masks, rle.encode_many(masks, compressed=False)):
            coco = mask_utils.frPyObjects(r, *m.shape)
            np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), m)
    assert rle.encode_many(np.zeros((0, 4, 5), bool)) == []


def test_device_path_finds_the_same_runs():
    # the path used for masks on an accelerator (torch.nonzero on the device), run here on CPU tensors
    rng = np.random.default_rng(2)
    for shape in [(3, 1, 9), (3, 9, 1), (4, 17, 23)]:
        m = rng.random(shape) < 0.5
        ours = rle._changes_torch(torch.from_numpy(m))
        ref = rle._changes_numpy(m)
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)


def test_uncompressed_matches_segment_anything():
    amg = pytest.importorskip("segment_anything.utils.amg")
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(7, 23, 31, generator=g) > 0.5
    masks[0] = True
    masks[1] = False
    assert rle.encode_many(masks, compressed=False) == amg.mask_to_rle_pytorch(masks)


def test_decode_matches_pycocotools():
    for m in _cases():
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ref = mask_utils.decode(r).astype(bool)
        np.testing.assert_array_equal(ref, m)
        np.testing.assert_array_equal(rle.decode(r), ref)  # bytes counts, as pycocotools returns them
        np.testing.assert_array_equal(rle.decode({"size": r["size"], "counts": r["counts"].decode()}), ref)
        np.testing.assert_array_equal(rle.decode(rle.encode(m, compressed=False)), ref)


def test_decode_coco_uncompressed_annotation():
    # an iscrowd-style annotation: uncompressed counts, converted by pycocotools' frPyObjects
    ann = {"size": [4, 3], "counts": [2, 3, 1, 4, 2]}
    ref = mask_utils.decode(mask_utils.frPyObjects(ann, 4, 3)).astype(bool)
    np.testing.assert_array_equal(rle.decode(ann), ref)


def test_area_and_bbox_match_pycocotools():
    for m in _cases():
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ours = rle.encode(m)
        assert rle.area(ours) == int(mask_utils.area(r)), m.shape
        assert rle.to_bbox(ours) == [float(v) for v in mask_utils.toBbox(r)], m.shape
        assert rle.to_bbox(rle.encode(m, compressed=False)) == rle.to_bbox(ours)


def test_bad_rle_is_refused():
    with pytest.raises(ValueError, match="sum to"):
        rle.decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="size"):
        rle.decode({"counts": [1]})
    with pytest.raises(ValueError, match="truncated"):
        rle.decode({"size": [2, 2], "counts": "a"})  # 'a' has the continuation bit
