"""Generator ``sam2``: SAM 2.1's automatic mask generator (everything mode) as lvlm Candidates.

Wraps ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``; every constructor knob of it is a
config key with the same name and default. Masks come back at the input resolution with xyxy boxes,
SAM 2's predicted IoU as ``scores`` and its stability score as ``stability``.

``min_mask_region_area``: SAM 2 applies it to the low-resolution logits with its compiled ``_C``
extension; where that extension is not built (CPU installs) the masks are cleaned instead with the
generator's own ``postprocess_small_regions`` (holes and islands below the area, then box NMS; needs
opencv), so the knob works either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import MaskGenerator, resolve_device
from ..errors import MissingDependencyError
from ..optional import has
from ..registry import register
from ..types import Candidates, masks_to_boxes
from .amg_settings import AmgSettings


@register(
    "generator",
    "sam2",
    description="SAM 2.1 automatic mask generator (everything mode)",
    source="facebookresearch/sam2 SAM 2.1 Hiera t/s/b+/l checkpoints (Apache-2.0)",
)
class Sam2Generator(MaskGenerator):
    """SAM 2.1 everything mode: a grid of point prompts -> filtered, de-duplicated candidate masks.

    ``variant``: tiny / small / base_plus / large (tiny_random: small random model for tests);
    ``model``: an already built SAM2Base to share (then variant / checkpoint are ignored). The other
    keys are SAM2AutomaticMaskGenerator's, with its defaults (chosen by SAM 2 for Hiera-L). The last
    ``cache_size`` images' candidates are kept, so several text prompts on one image run it once.

    Args:
        variant: the SAM 2.1 variant: ``tiny``, ``small``, ``base_plus``, ``large`` (``tiny_random``: a small
            random model for tests).
        checkpoint: ``default`` (the official weights), a path, or None / ``random`` for random weights.
        device: ``auto``, ``cpu``, ``cuda``...
        points_per_side: points along each side of the prompt grid (``points_per_side``² points per crop).
        points_per_batch: point prompts per mask-decoder call.
        pred_iou_thresh: masks with a lower predicted IoU are dropped.
        stability_score_thresh: masks with a lower stability score are dropped.
        stability_score_offset: the shift of the mask threshold used for the stability score.
        mask_threshold: the logit threshold of the masks.
        box_nms_thresh: box IoU above which non-maximum suppression drops the lower-scored mask.
        crop_n_layers: layers of image crops run besides the whole image (layer i has (2**i)**2 crops).
        crop_nms_thresh: box IoU of the non-maximum suppression between masks of different crops.
        crop_overlap_ratio: overlap of neighbouring crops, as a fraction of the image side.
        crop_n_points_downscale_factor: the grid of crop layer i has ``points_per_side / factor**i`` points
            per side.
        min_mask_region_area: holes and islands smaller than this many pixels are removed (0: off).
        use_m2m: refine each mask with one more decoder pass prompted by its own logits.
        multimask_output: three masks per point prompt (else one).
        model: an already built ``SAM2Base`` to share (``variant`` / ``checkpoint`` are then ignored).
    """

    def __init__(
        self,
        variant: str = "large",
        checkpoint: Any = "default",
        device: str = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        use_m2m: bool = False,
        multimask_output: bool = True,
        model: Any = None,
    ) -> None:
        from ..models.sam2 import (
            _require_sam2,
            build_sam2_model,
            fit_feature_sizes,
            has_postprocessing_extension,
        )

        self.settings = AmgSettings.from_knobs(locals())
        _require_sam2()
        self.device = resolve_device(device)
        self.model = model if model is not None else build_sam2_model(variant, checkpoint, self.device)
        self.variant = variant
        self.source = f"sam2:{variant}" if model is None else "sam2"
        self.min_mask_region_area = self.settings.min_mask_region_area
        # without sam2's _C extension its predictor would skip the hole/sprinkle filling with a warning
        # per crop; give it 0 and clean the final masks here instead
        self._clean_here = self.min_mask_region_area > 0 and not has_postprocessing_extension()
        self.box_nms_thresh = self.settings.box_nms_thresh
        if self._clean_here and not has("cv2"):
            raise MissingDependencyError(
                "min_mask_region_area > 0 without sam2's compiled extension cleans masks with OpenCV; "
                "install it with: pip install opencv-python-headless"
            )

        import warnings

        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        with warnings.catch_warnings():  # torch.jit.script deprecation inside SAM2Transforms
            warnings.simplefilter("ignore", FutureWarning)
            knobs = {
                **self.settings.kwargs("mask_threshold"),
                "min_mask_region_area": 0 if self._clean_here else self.min_mask_region_area,
            }
            self.amg = SAM2AutomaticMaskGenerator(
                self.model,
                **knobs,
                output_mode="binary_mask",
                use_m2m=use_m2m,
                multimask_output=multimask_output,
            )
        fit_feature_sizes(self.amg.predictor)

    def _generate(self, image: np.ndarray) -> Candidates:
        import torch
        from sam2.utils.amg import rle_to_mask

        h, w = image.shape[:2]
        with torch.inference_mode():
            data = self.amg._generate_masks(np.ascontiguousarray(image))  # what amg.generate() runs
        if self._clean_here and len(data["rles"]):
            data = self.amg.postprocess_small_regions(data, self.min_mask_region_area, self.box_nms_thresh)
            data.to_numpy()
        n = len(data["rles"])
        if n == 0:
            return Candidates.empty(h, w, source=self.source)
        crop_boxes = np.asarray(data["crop_boxes"], np.float32).reshape(n, 4)
        crop_boxes[:, 2:] -= crop_boxes[:, :2]  # XYWH, as SAM 2's records give them
        masks = np.stack([rle_to_mask(r) for r in data["rles"]]).astype(bool)
        return Candidates(
            masks,
            boxes=masks_to_boxes(masks),  # lvlm's xyxy convention (exclusive right/bottom edges)
            scores=np.asarray(data["iou_preds"], np.float32),
            stability=np.asarray(data["stability_score"], np.float32),
            source=self.source,
            extra={
                "point_coords": np.asarray(data["points"], np.float32).reshape(n, 2),
                "crop_boxes": crop_boxes,
            },
        )
