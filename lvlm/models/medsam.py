"""MedSAM's adapter (SAM ViT-B fine-tuned on medical images): its reference recipe, not SAM's predictor.

Pre- and postprocessing follow MedSAM's reference ``MedSAM_Inference.py`` (bowang-lab/MedSAM):

1. the image is resized to 1024 x 1024 (not longest side: the aspect ratio is not kept), bicubic with
   antialiasing, back to uint8 (the script uses skimage's order-3 resize; torch's bicubic is used here);
2. min-max normalised to [0, 1] over the whole image; no SAM mean / std normalisation;
3. boxes (and points) are scaled by 1024 / W in x and 1024 / H in y;
4. one mask per prompt (no multimask): ``sigmoid`` of the 256 x 256 low-res logits, bilinearly upsampled
   to H x W, ``> 0.5``.

The network is :func:`lvlm.models.sam.build_sam` with ``model_type="medsam"``.
"""

from __future__ import annotations

import numpy as np

from .sam import SamFamilyAdapter


def preprocess(image: np.ndarray, size: int = 1024, device: str = "cpu"):
    """MedSAM's input: 1 x 3 x size x size float32 in [0, 1] of an H x W x 3 uint8 image.

    Args:
        image: H x W x 3 uint8 RGB.
        size: the encoder's input side (1024 for MedSAM).
        device: where the tensor is made.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.ascontiguousarray(image), device=device).permute(2, 0, 1)[None].to(torch.float32)
    shrinking = size < max(image.shape[:2])
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=shrinking)
    x = torch.floor(x.clamp(0, 255))  # the script's astype(np.uint8)
    lo, hi = x.min(), x.max()
    return ((x - lo) / torch.clamp(hi - lo, min=1e-8)).contiguous()


class MedSamAdapter(SamFamilyAdapter):
    """MedSAM's recipe on a SAM-architecture model: square resize, min-max, per-axis prompt scaling,
    probabilities upsampled then thresholded (``threshold`` 0.5)."""

    preprocess_mode = "medsam"
    threshold = 0.5

    def preprocess(self, image: np.ndarray):
        return preprocess(image, self.img_size, str(self.device))

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return self.img_size, self.img_size

    def scale(self, h: int, w: int) -> tuple[float, float]:
        return self.img_size / w, self.img_size / h

    def postprocess(self, low, h: int, w: int):
        import torch.nn.functional as F

        return F.interpolate(low, (h, w), mode="bilinear", align_corners=False)

    def masks(self, low, h: int, w: int, threshold: float | None = None):
        import torch

        thr = self.threshold if threshold is None else threshold
        return self.postprocess(torch.sigmoid(low), h, w) > thr  # MedSAM's script upsamples probabilities
