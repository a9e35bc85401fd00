"""Fully connected (dense) CRF refining a saliency map into foreground / background (Krähenbühl & Koltun
2011).

Two labels (background 0, foreground 1). Energy: a unary term from the saliency map plus two Potts
pairwise terms over *all* pixel pairs, as in pydensecrf's ``DenseCRF2D``:

- Gaussian (smoothness): ``k(i, j) = exp(-|p_i - p_j|^2 / (2 gaussian_sxy^2))``, weight ``gaussian_compat``;
- bilateral (appearance):
  ``exp(-|p_i - p_j|^2 / (2 bilateral_sxy^2) - |I_i - I_j|^2 / (2 bilateral_srgb^2))``,
  weight ``bilateral_compat`` (``I``: RGB in 0-255).

Mean-field inference, ``iterations`` times: ``Q = softmax(-U + sum_k compat_k * Kn_k Q)``, starting from
``softmax(-U)``, with pydensecrf's symmetric kernel normalisation ``Kn = D^-1/2 K D^-1/2``
(``D = K 1``). The same parameters mean the same thing in both backends:

- ``torch`` (default, plain torch, runs on the model's device): the pairwise sums are computed exactly
  (no permutohedral lattice): the Gaussian kernel as a separable convolution (truncated at 4 sigma), the
  bilateral kernel densely, in row blocks. Images above ``max_pixels`` pixels are downsampled first
  (area averaging; the spatial widths ``*_sxy`` are scaled by the same factor) and the marginals are
  upsampled back bilinearly, so the cost stays bounded;
- ``pydensecrf`` (extra ``crf``, package pydensecrf2): Krähenbühl's C++ code at full resolution with
  its permutohedral-lattice approximation of the same kernels.

Unary (``unary``): ``"prob"``: ``P(fg) = (1 - gt_prob) + (2 gt_prob - 1) s`` for saliency ``s`` in [0, 1]
(a saliency of 1 means foreground with confidence ``gt_prob``, as pydensecrf's ``unary_from_labels``),
``U = -log P``; ``"medclipsam"``: MedCLIP-SAM's energies ``-log(s + eps) / (tau * sigmoid(s))`` for
foreground and ``-log(1 - s + eps) / (tau * sigmoid(1 - s))`` for background.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import register

UNARY_MODES = ("prob", "medclipsam")


def unary_from_saliency(
    saliency: np.ndarray, unary: str = "prob", gt_prob: float = 0.7, tau: float = 1.05, eps: float = 1e-8
) -> np.ndarray:
    """``2 x H x W`` float32 unary energies (background, foreground) from an ``H x W`` saliency in [0, 1].

    Args:
        saliency: an H x W saliency map in [0, 1].
        unary: ``prob`` or ``medclipsam`` (see the module docstring).
        gt_prob: ``prob``: the confidence of a saliency of 1, in (0.5, 1).
        tau: ``medclipsam``: the temperature.
        eps: ``medclipsam``: added inside the logarithms.
    """
    s = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, 1.0)
    if unary == "prob":
        if not 0.5 < gt_prob < 1.0:
            raise ValueError(f"gt_prob={gt_prob!r} must lie in (0.5, 1)")
        p = (1.0 - gt_prob) + (2.0 * gt_prob - 1.0) * s
        u = np.stack([-np.log(1.0 - p), -np.log(p)])
    elif unary == "medclipsam":

        def sig(x):
            return 1.0 / (1.0 + np.exp(-x))

        u = np.stack([-np.log(1.0 - s + eps) / (tau * sig(1.0 - s)), -np.log(s + eps) / (tau * sig(s))])
    else:
        raise ValueError(f"unary={unary!r}; valid: {', '.join(UNARY_MODES)}")
    return u.astype(np.float32)


class DenseCRF:
    """Dense CRF parameters shared by the backends; ``crf(image, saliency) -> H x W`` foreground
    probability (the mean-field marginal; ``> 0.5`` is the CRF's labelling).

    Args:
        gaussian_sxy: spatial width of the Gaussian (smoothness) kernel, in pixels.
        gaussian_compat: weight of the Gaussian kernel.
        bilateral_sxy: spatial width of the bilateral (appearance) kernel, in pixels.
        bilateral_srgb: colour width of the bilateral kernel (RGB, 0-255).
        bilateral_compat: weight of the bilateral kernel.
        iterations: mean-field iterations.
        unary: ``prob`` or ``medclipsam``.
        gt_prob: ``prob``: the confidence of a saliency of 1.
        tau: ``medclipsam``: the temperature.
        eps: ``medclipsam``: added inside the logarithms.
    """

    def __init__(
        self,
        gaussian_sxy: float = 3.0,
        gaussian_compat: float = 3.0,
        bilateral_sxy: float = 60.0,
        bilateral_srgb: float = 5.0,
        bilateral_compat: float = 5.0,
        iterations: int = 5,
        unary: str = "prob",
        gt_prob: float = 0.7,
        tau: float = 1.05,
        eps: float = 1e-8,
    ) -> None:
        if unary not in UNARY_MODES:
            raise ValueError(f"unary={unary!r}; valid: {', '.join(UNARY_MODES)}")
        if min(gaussian_sxy, bilateral_sxy, bilateral_srgb) <= 0:
            raise ValueError("gaussian_sxy, bilateral_sxy and bilateral_srgb must be > 0")
        if int(iterations) < 0:
            raise ValueError(f"iterations={iterations!r} must be >= 0")
        self.gaussian_sxy = float(gaussian_sxy)
        self.gaussian_compat = float(gaussian_compat)
        self.bilateral_sxy = float(bilateral_sxy)
        self.bilateral_srgb = float(bilateral_srgb)
        self.bilateral_compat = float(bilateral_compat)
        self.iterations = int(iterations)
        self.unary = unary
        self.gt_prob = float(gt_prob)
        self.tau = float(tau)
        self.eps = float(eps)
        unary_from_saliency(np.zeros((1, 1)), unary, self.gt_prob, self.tau, self.eps)  # validate

    def unary_energy(self, saliency: np.ndarray) -> np.ndarray:
        """``2 x H x W`` unary energies of ``saliency`` with this CRF's unary settings.

        Args:
            saliency: an H x W saliency map in [0, 1].
        """
        return unary_from_saliency(saliency, self.unary, self.gt_prob, self.tau, self.eps)

    @staticmethod
    def _check(image: np.ndarray, saliency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image)
        saliency = np.asarray(saliency, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
        if saliency.shape != image.shape[:2]:
            raise ValueError(f"saliency shape {saliency.shape} != image shape {image.shape[:2]}")
        return image, saliency

    def __call__(self, image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _gaussian_blur_sum(q: torch.Tensor, sigma_y: float, sigma_x: float) -> torch.Tensor:
    """``sum_j exp(-dy^2 / (2 sigma_y^2) - dx^2 / (2 sigma_x^2)) q_j`` over the pixels of the image: a
    separable convolution with zero padding (no pixels beyond the border), truncated at 4 sigma.
    q: C x H x W."""

    def taps(sigma: float) -> tuple[torch.Tensor, int]:
        r = max(1, math.ceil(4.0 * sigma))
        x = torch.arange(-r, r + 1, device=q.device, dtype=q.dtype)
        return torch.exp(-(x * x) / (2.0 * sigma * sigma)), r

    ky, ry = taps(sigma_y)
    kx, rx = taps(sigma_x)
    out = F.conv2d(q[:, None], kx.view(1, 1, 1, -1), padding=(0, rx))
    out = F.conv2d(out, ky.view(1, 1, -1, 1), padding=(ry, 0))
    return out[:, 0]


class _DenseKernel:
    """``q -> K q`` with ``K_ij = exp(-|f_i - f_j|^2 / 2)`` for features ``N x d``: K is kept when it has at
    most ``cache_entries`` entries, else recomputed in row blocks of ``block`` at each call."""

    def __init__(self, feats: torch.Tensor, block: int = 2048, cache_entries: int = 1 << 25) -> None:
        self.feats = feats
        self.sq = (feats * feats).sum(1)
        self.block = block
        n = feats.shape[0]
        self.k = self._rows(0, n) if n * n <= cache_entries else None

    def _rows(self, s: int, e: int) -> torch.Tensor:
        f = self.feats[s:e]
        d2 = (self.sq[s:e, None] + self.sq[None, :] - 2.0 * (f @ self.feats.T)).clamp_(min=0)
        return torch.exp_(d2.mul_(-0.5))

    def __call__(self, q: torch.Tensor) -> torch.Tensor:  # q: N x C
        if self.k is not None:
            return self.k @ q
        out = torch.empty_like(q)
        for s in range(0, q.shape[0], self.block):
            out[s : s + self.block] = self._rows(s, s + self.block) @ q
        return out


@register(
    "crf",
    "torch",
    description="dense CRF in plain torch: exact pairwise sums (separable Gaussian, "
    "blocked bilateral), large images downsampled",
    source="ours",
)
class TorchDenseCRF(DenseCRF):
    """Dense CRF, mean-field in plain torch on ``device``; images above ``max_pixels`` are downsampled
    (``None``: 16384 on a GPU, 4096 on the CPU).

    Args:
        gaussian_sxy: as :class:`DenseCRF`.
        gaussian_compat: as :class:`DenseCRF`.
        bilateral_sxy: as :class:`DenseCRF`.
        bilateral_srgb: as :class:`DenseCRF`.
        bilateral_compat: as :class:`DenseCRF`.
        iterations: as :class:`DenseCRF`.
        unary: as :class:`DenseCRF`.
        gt_prob: as :class:`DenseCRF`.
        tau: as :class:`DenseCRF`.
        eps: as :class:`DenseCRF`.
        max_pixels: images above this many pixels are downsampled first (None: 16384 on a GPU, 4096 on the
            CPU).
        block: rows per block of the dense bilateral product.
        device: ``auto``, ``cpu``, ``cuda``...
    """

    def __init__(
        self,
        gaussian_sxy: float = 3.0,
        gaussian_compat: float = 3.0,
        bilateral_sxy: float = 60.0,
        bilateral_srgb: float = 5.0,
        bilateral_compat: float = 5.0,
        iterations: int = 5,
        unary: str = "prob",
        gt_prob: float = 0.7,
        tau: float = 1.05,
        eps: float = 1e-8,
        max_pixels: int | None = None,
        block: int = 2048,
        device: str = "auto",
    ) -> None:
        super().__init__(
            gaussian_sxy,
            gaussian_compat,
            bilateral_sxy,
            bilateral_srgb,
            bilateral_compat,
            iterations,
            unary,
            gt_prob,
            tau,
            eps,
        )
        from ..components import resolve_device

        self.device = resolve_device(device)
        if max_pixels is None:
            max_pixels = 16384 if self.device.startswith("cuda") else 4096
        if int(max_pixels) < 16:
            raise ValueError(f"max_pixels={max_pixels!r} must be >= 16")
        self.max_pixels = int(max_pixels)
        self.block = int(block)

    def __call__(self, image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
        image, saliency = self._check(image, saliency)
        h, w = saliency.shape
        dev = torch.device(self.device)
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev).permute(2, 0, 1)
        unary = torch.from_numpy(self.unary_energy(saliency)).to(dev)
        factor = min(1.0, math.sqrt(self.max_pixels / float(h * w)))
        hs, ws = max(1, round(h * factor)), max(1, round(w * factor))
        if (hs, ws) != (h, w):
            img = F.interpolate(img[None], size=(hs, ws), mode="area")[0]
            unary = F.interpolate(unary[None], size=(hs, ws), mode="area")[0]
            fy, fx = hs / h, ws / w
        else:
            fy = fx = 1.0
        q = self._mean_field(img, unary, fy, fx)
        if (hs, ws) != (h, w):
            q = F.interpolate(q[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return q[1].clamp(0, 1).cpu().numpy().astype(np.float32)

    def _mean_field(self, img: torch.Tensor, unary: torch.Tensor, fy: float, fx: float) -> torch.Tensor:
        """Mean-field on a (possibly downsampled) grid: img 3 x h x w (0-255), unary 2 x h x w ->
        Q 2 x h x w."""
        _, h, w = img.shape
        n = h * w
        # Gaussian kernel: separable, widths in (downsampled) pixels

        def gauss(q: torch.Tensor) -> torch.Tensor:
            return _gaussian_blur_sum(q, self.gaussian_sxy * fy, self.gaussian_sxy * fx)

        # bilateral kernel: features (x / sxy, y / sxy, rgb / srgb) in original-pixel units
        ys, xs = torch.meshgrid(
            torch.arange(h, device=img.device, dtype=torch.float32) / fy,
            torch.arange(w, device=img.device, dtype=torch.float32) / fx,
            indexing="ij",
        )
        feats = torch.cat(
            [
                torch.stack([xs, ys]).reshape(2, n) / self.bilateral_sxy,
                img.reshape(3, n) / self.bilateral_srgb,
            ]
        ).T.contiguous()

        kernel = _DenseKernel(feats, self.block)

        def bilat(q: torch.Tensor) -> torch.Tensor:
            return kernel(q.reshape(q.shape[0], n).T.contiguous()).T.reshape(q.shape)

        ones = torch.ones(1, h, w, device=img.device)
        norms = [(gauss(ones) + 1e-20).rsqrt(), (bilat(ones) + 1e-20).rsqrt()]
        kernels = [(gauss, norms[0], self.gaussian_compat), (bilat, norms[1], self.bilateral_compat)]
        q = torch.softmax(-unary, dim=0)
        for _ in range(self.iterations):
            msg = -unary
            for apply, nrm, compat in kernels:
                if compat != 0:
                    msg = msg + compat * nrm * apply(q * nrm)
            q = torch.softmax(msg, dim=0)
        return q


@register(
    "crf",
    "pydensecrf",
    description="dense CRF via pydensecrf2 (Krähenbühl's C++ permutohedral lattice) at full resolution",
    source="pydensecrf2 (extra crf)",
)
class PyDenseCRF(DenseCRF):
    """Dense CRF with pydensecrf (``DenseCRF2D``, symmetric normalisation, Potts compatibilities)."""

    def __call__(self, image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
        from ..optional import require

        dcrf = require("pydensecrf.densecrf", "the pydensecrf CRF backend")
        image, saliency = self._check(image, saliency)
        h, w = saliency.shape
        d = dcrf.DenseCRF2D(w, h, 2)
        d.setUnaryEnergy(np.ascontiguousarray(self.unary_energy(saliency).reshape(2, -1)))
        if self.gaussian_compat != 0:
            d.addPairwiseGaussian(sxy=self.gaussian_sxy, compat=self.gaussian_compat)
        if self.bilateral_compat != 0:
            d.addPairwiseBilateral(
                sxy=self.bilateral_sxy,
                srgb=self.bilateral_srgb,
                rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                compat=self.bilateral_compat,
            )
        q = np.asarray(d.inference(self.iterations), dtype=np.float32).reshape(2, h, w)
        return q[1]
