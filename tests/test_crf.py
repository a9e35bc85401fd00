"""Dense CRF: the plain-torch backend against pydensecrf2 (Krähenbühl's C++ code) with the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lvlm.registry import available, build
from lvlm.selectors.crf import TorchDenseCRF, unary_from_saliency


def _scene(h, w, seed):
    """A noisy image with a red rectangle, and a blurred, shifted, noisy saliency map of it."""
    rng = np.random.default_rng(seed)
    img = rng.normal(90, 20, (h, w, 3))
    y0, x0, hh, ww = h // 4, w // 3, h // 2, w // 3
    img[y0 : y0 + hh, x0 : x0 + ww] = rng.normal((200, 60, 50), 20, (hh, ww, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), bool)
    truth[y0 : y0 + hh, x0 : x0 + ww] = True
    sal = np.zeros((h, w))
    sal[y0 + 3 : y0 + hh + 3, x0 - 4 : x0 + ww - 4] = 1
    sal = np.clip(gaussian_filter(sal, 4) + rng.normal(0, 0.15, (h, w)), 0, 1).astype(np.float32)
    return img, sal, truth


PARAMS = [
    {},  # the defaults: Gaussian 3/3, bilateral 60/5/5, 5 iterations, "prob" unary with gt_prob 0.7
    {"unary": "medclipsam", "iterations": 1},  # MedCLIP-SAM's post-processing
    {"bilateral_sxy": 20, "bilateral_srgb": 13, "bilateral_compat": 10, "iterations": 10, "gt_prob": 0.6},
]


@pytest.mark.parametrize("params", PARAMS, ids=["defaults", "medclipsam", "strong"])
def test_torch_crf_agrees_with_pydensecrf(params):
    pytest.importorskip("pydensecrf.densecrf")
    img, sal, _ = _scene(40, 56, seed=len(params))
    ours = build("crf", "torch", device="cpu", **params)(img, sal)
    ref = build("crf", "pydensecrf", **params)(img, sal)
    assert ours.shape == ref.shape == sal.shape
    agreement = ((ours > 0.5) == (ref > 0.5)).mean()
    assert agreement >= 0.98, agreement
    assert (
        (ref > 0.5) != (sal > 0.5)
    ).mean() > 0.02  # the CRF did change the labelling (the check has teeth)


def test_crf_refines_noisy_saliency_towards_the_object():
    img, sal, truth = _scene(48, 64, seed=3)
    q = TorchDenseCRF(bilateral_sxy=20, bilateral_srgb=13, bilateral_compat=10, iterations=10, device="cpu")(
        img, sal
    )

    def iou(m):
        return (m & truth).sum() / (m | truth).sum()

    assert iou(q > 0.5) > iou(sal > 0.5) + 0.05
    assert iou(q > 0.5) > 0.85


def test_large_images_are_downsampled_and_still_agree():
    img, sal, _truth = _scene(56, 72, seed=4)
    q = TorchDenseCRF(device="cpu", max_pixels=1000)(img, sal)  # run on a 28 x 36 grid
    assert q.shape == sal.shape and q.dtype == np.float32
    full = TorchDenseCRF(device="cpu", max_pixels=56 * 72)(img, sal)
    assert ((q > 0.5) == (full > 0.5)).mean() > 0.95


def test_blocked_kernel_equals_the_stored_kernel():
    import torch

    from lvlm.selectors.crf import _DenseKernel

    g = torch.Generator().manual_seed(0)
    feats, q = torch.randn(700, 5, generator=g), torch.rand(700, 2, generator=g)
    stored = _DenseKernel(feats)
    blocked = _DenseKernel(feats, block=128, cache_entries=0)
    assert stored.k is not None and blocked.k is None
    exact = torch.exp(-0.5 * torch.cdist(feats.double(), feats.double()) ** 2) @ q.double()
    torch.testing.assert_close(blocked(q).double(), exact, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stored(q).double(), exact, atol=1e-4, rtol=1e-4)


def test_zero_iterations_is_the_unary_and_unary_modes():
    img, sal, _ = _scene(16, 20, seed=5)
    q = TorchDenseCRF(iterations=0, gt_prob=0.8, device="cpu")(img, sal)
    np.testing.assert_allclose(q, 0.2 + 0.6 * sal, atol=1e-5)
    u = unary_from_saliency(np.array([[0.0, 1.0]]), "prob", gt_prob=0.9)
    np.testing.assert_allclose(np.exp(-u[:, 0, 1]), [0.1, 0.9], atol=1e-6)
    m = unary_from_saliency(np.array([[0.2, 0.9]]), "medclipsam")
    assert m[1, 0, 1] < m[0, 0, 1] and m[1, 0, 0] > m[0, 0, 0]  # salient -> low foreground energy


def test_registered_and_validated():
    assert {"torch", "pydensecrf"} <= set(available("crf"))
    for bad in ({"unary": "softmax"}, {"gt_prob": 0.4}, {"bilateral_srgb": 0}, {"iterations": -1}):
        with pytest.raises(ValueError):
            TorchDenseCRF(device="cpu", **bad)
    with pytest.raises(ValueError, match="shape"):
        TorchDenseCRF(device="cpu")(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.float32))
