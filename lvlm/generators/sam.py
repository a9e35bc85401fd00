"""``sam``: SAM's automatic mask generator (everything mode), segment_anything's SamAutomaticMaskGenerator.

Every knob of SamAutomaticMaskGenerator is a config key, with its defaults (chosen by SAM for ViT-H).
The masks come back as :class:`~lvlm.types.Candidates` in the generator's order, with SAM's predicted
IoU as ``scores`` and its stability score as ``stability``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..components import MaskGenerator, resolve_device
from ..errors import MissingDependencyError
from ..models.sam import build_sam
from ..optional import has
from ..registry import register
from ..types import Candidates, masks_to_boxes
from .amg_settings import AmgSettings


def candidates_from_records(records: list[dict], height: int, width: int, source: str) -> Candidates:
    """SamAutomaticMaskGenerator's ``binary_mask`` records -> Candidates (boxes xyxy, exclusive right/bottom).

    Args:
        records: the generator's records (``segmentation``, ``predicted_iou``, ``stability_score``...).
        height: image height in pixels.
        width: image width in pixels.
        source: the producing component's name.
    """
    if not records:
        return Candidates.empty(height, width, source=source)
    masks = np.stack([r["segmentation"] for r in records]).astype(bool)
    return Candidates(
        masks,
        boxes=masks_to_boxes(masks),
        scores=np.array([r["predicted_iou"] for r in records], np.float32),
        stability=np.array([r["stability_score"] for r in records], np.float32),
        source=source,
        extra={
            "point_coords": np.array([r["point_coords"][0] for r in records], np.float32),
            "crop_boxes": np.array([r["crop_box"] for r in records], np.float32),  # XYWH, as SAM gives them
        },
    )


def require_cv2(min_mask_region_area: int) -> None:
    """segment_anything removes small regions with OpenCV: a clear error when it is missing and needed.

    Args:
        min_mask_region_area: the generator's setting (OpenCV is needed when it is > 0).
    """
    if min_mask_region_area > 0 and not has("cv2"):
        raise MissingDependencyError(
            "min_mask_region_area > 0 needs OpenCV (segment_anything removes small "
            "regions with it); install it with: pip install opencv-python-headless"
        )


def automatic_mask_generator_class():
    """segment_anything's ``SamAutomaticMaskGenerator``, except that a crop which keeps no mask gives a 0 x 4
    ``crop_boxes`` tensor. The official one gives shape (0,), and with ``crop_n_layers`` > 0 and no mask kept
    in any crop its cross-crop NMS then fails with an IndexError instead of returning no masks."""
    from segment_anything import SamAutomaticMaskGenerator

    class AutomaticMaskGenerator(SamAutomaticMaskGenerator):
        def _process_crop(self, *args: Any, **kwargs: Any):
            data = super()._process_crop(*args, **kwargs)
            if len(data["rles"]) == 0:
                data["crop_boxes"] = data["crop_boxes"].reshape(0, 4)
            return data

    return AutomaticMaskGenerator


@register(
    "generator",
    "sam",
    description="SAM automatic mask generator (everything mode, SamAutomaticMaskGenerator)",
    source="segment_anything; SAM checkpoints from dl.fbaipublicfiles.com (Apache-2.0)",
)
class SamGenerator(MaskGenerator):
    """Everything-mode candidates from SAM: a grid of point prompts, filtered by predicted IoU and stability,
    NMS.

    The keys besides ``model_type`` / ``checkpoint`` / ``device`` are SamAutomaticMaskGenerator's, with its
    defaults. The last ``cache_size`` images' candidates
    are kept, so several text prompts on one image run the generator once.

    Args:
        model_type: the SAM variant: ``vit_h``, ``vit_l``, ``vit_b``, ``mobilesam``, ``medsam`` or
            ``vit_tiny`` (random, for tests).
        checkpoint: ``default`` (the official weights), a path, or None / ``random`` for random weights.
        device: ``auto``, ``cpu``, ``cuda``...
        points_per_side: points along each side of the prompt grid (``points_per_side``² points per crop).
        points_per_batch: point prompts per mask-decoder call.
        pred_iou_thresh: masks with a lower predicted IoU are dropped.
        stability_score_thresh: masks with a lower stability score are dropped.
        stability_score_offset: the shift of the mask threshold used for the stability score.
        box_nms_thresh: box IoU above which non-maximum suppression drops the lower-scored mask.
        crop_n_layers: layers of image crops run besides the whole image (layer i has (2**i)**2 crops).
        crop_nms_thresh: box IoU of the non-maximum suppression between masks of different crops.
        crop_overlap_ratio: overlap of neighbouring crops, as a fraction of the image side.
        crop_n_points_downscale_factor: the grid of crop layer i has ``points_per_side / factor**i`` points
            per side.
        min_mask_region_area: holes and islands smaller than this many pixels are removed (0: off).
    """

    def __init__(
        self,
        model_type: str = "vit_h",
        checkpoint: Any = "default",
        device: str = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
    ) -> None:
        self.settings = AmgSettings.from_knobs(locals())
        require_cv2(self.settings.min_mask_region_area)
        self.device = resolve_device(device)
        self.model_type = model_type
        self.model = build_sam(model_type, checkpoint, self.device)
        self.amg = automatic_mask_generator_class()(
            self.model, **self.settings.kwargs(), output_mode="binary_mask"
        )
        self.source = "mobilesam" if model_type == "mobilesam" else f"sam:{model_type}"

    def _generate(self, image: np.ndarray) -> Candidates:
        return candidates_from_records(self.amg.generate(image), image.shape[0], image.shape[1], self.source)
