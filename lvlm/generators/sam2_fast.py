"""``sam2_fast``: SAM 2's automatic mask generator, batched on the model's device, giving the official masks.

The same engine as ``sam_fast`` (:class:`~lvlm.generators.sam_fast.FastAutomaticMaskGenerator`) with SAM 2's
steps, each as ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` runs it: the image transform of
``SAM2Transforms`` (square resize, ImageNet normalisation), the backbone with ``no_mem_embed`` and the
high-res features, float32 point coordinates normalised by the crop size, the decoder with ``repeat_image``
for batched points, the optional one-step mask-to-mask refinement (``use_m2m``), the generator's own
``mask_threshold``, and ``min_mask_region_area`` as SAM 2 applies it: hole filling and sprinkle removal on the
low-resolution logits before the single bilinear upsampling. SAM 2 does that with its compiled ``_C``
extension and skips it (with a warning) where the extension is not built; here it runs on any device with the
batched component labelling of :func:`lvlm.generators.sam_fast.components`.

Crops (and several images with ``generate_batch``) share batched backbone calls, optionally under bf16
autocast.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..registry import register
from .amg_settings import check_number
from .amg_utils import components
from .sam_fast import FastAutomaticMaskGenerator


@dataclass
class _Sam2Crop:
    image_embed: torch.Tensor  # 1 x C x h x w
    high_res: list[torch.Tensor]  # SAM 2's high-resolution feature maps, each 1 x C' x H' x W'


@register(
    "generator",
    "sam2_fast",
    description="SAM 2.1 automatic masks (the official ones), batched on device",
    source="facebookresearch/sam2 SAM 2.1 Hiera t/s/b+/l checkpoints (Apache-2.0)",
)
class Sam2FastGenerator(FastAutomaticMaskGenerator):
    """Everything-mode SAM 2.1 giving ``SAM2AutomaticMaskGenerator``'s masks with batched device-side work.

    ``variant`` / ``checkpoint`` / ``device`` as for the ``sam2`` generator (see
    :func:`lvlm.models.sam2.build_sam2_model`); the knobs from ``points_per_side`` to ``multimask_output``
    are the official ones with the official defaults except ``points_per_batch`` (256 on a GPU, 64 on the
    CPU). Extra knobs as for ``sam_fast``: ``bf16``, ``encoder_batch_size``, ``chunk_pixels``, ``model``
    (an already-built ``SAM2Base``) and ``progress``.

    Args:
        variant: the SAM 2.1 variant: ``tiny``, ``small``, ``base_plus``, ``large`` (``tiny_random``: a small
            random model for tests).
        checkpoint: ``default`` (the official weights), a path, or None / ``random`` for random weights.
        device: ``auto``, ``cpu``, ``cuda``...
        points_per_side: points along each side of the prompt grid (``points_per_side``² points per crop).
        points_per_batch: point prompts per mask-decoder call (None: 256 on a GPU, 64 on the CPU).
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
        point_grids: explicit point grids (coordinates in [0, 1]), one per crop layer, instead of
            ``points_per_side``.
        min_mask_region_area: holes and islands smaller than this many pixels are removed (0: off).
        output_mode: ``binary_mask``, ``uncompressed_rle`` or ``coco_rle`` (the ``segmentation`` of
            :meth:`generate_records`).
        use_m2m: refine each mask with one more decoder pass prompted by its own logits.
        multimask_output: three masks per point prompt (else one).
        bf16: run the image encoder under bf16 autocast.
        encoder_batch_size: crops / images per image-encoder call.
        chunk_pixels: full-resolution mask pixels processed at once (default 2**27 on a GPU, 2**24 on the
            CPU).
        model: an already built ``SAM2Base`` (``variant`` / ``checkpoint`` are then ignored).
        progress: show a progress bar over crops.
    """

    name = "sam2_fast"
    points_dtype = torch.float32
    small_regions_full_res = False  # SAM 2 applies min_mask_region_area to the low-res logits (see _upscale)

    def __init__(
        self,
        variant: str = "large",
        checkpoint: Any = "default",
        device: str = "auto",
        points_per_side: int | None = 32,
        points_per_batch: int | None = None,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        bf16: bool = False,
        encoder_batch_size: int = 4,
        chunk_pixels: int | None = None,
        model: Any = None,
        progress: bool = False,
    ) -> None:
        from ..optional import require

        require("sam2", "SAM 2")
        from sam2.utils.amg import build_all_layer_point_grids

        check_number("mask_threshold", mask_threshold)
        self._setup_knobs(
            points_per_side,
            points_per_batch,
            pred_iou_thresh,
            stability_score_thresh,
            stability_score_offset,
            box_nms_thresh,
            crop_n_layers,
            crop_nms_thresh,
            crop_overlap_ratio,
            crop_n_points_downscale_factor,
            point_grids,
            min_mask_region_area,
            output_mode,
            bf16,
            encoder_batch_size,
            chunk_pixels,
            device,
            progress,
            build_all_layer_point_grids,
        )
        self.source = "sam2_fast" if model is not None else f"sam2_fast:{variant}"
        if model is None:
            from ..models.sam2 import build_sam2_model

            model = build_sam2_model(variant, checkpoint, device=self.device)
        self.model = model.to(self.device).eval()
        self.variant = variant
        self.mask_threshold = float(mask_threshold)
        self.use_m2m = bool(use_m2m)
        self.multimask_output = bool(multimask_output)
        from sam2.utils.transforms import SAM2Transforms

        with warnings.catch_warnings():  # torch.jit.script deprecation inside SAM2Transforms
            warnings.simplefilter("ignore", FutureWarning)
            # the predictor's transforms: its own mask_threshold (0) is the one its hole filling uses
            self.transforms = SAM2Transforms(resolution=self.model.image_size, mask_threshold=0.0)
        self._dense_pe: torch.Tensor | None = None

    def _encode(self, crops: list[np.ndarray]) -> list[_Sam2Crop]:
        """Backbone features of all crops, ``encoder_batch_size`` per call (each as
        ``SAM2ImagePredictor.set_image``)."""
        model = self.model
        inputs = [self.transforms(np.ascontiguousarray(c)) for c in crops]  # on the CPU, as the official
        dev_type = torch.device(self.device).type
        out: list[_Sam2Crop] = []
        for k in range(0, len(inputs), self.encoder_batch_size):
            batch = torch.stack(inputs[k : k + self.encoder_batch_size]).to(self.device)
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=self.bf16):
                backbone_out = model.forward_image(batch)
                _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
            vision_feats = [f.float() for f in vision_feats]
            if model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
            b = len(batch)
            feats = [f.permute(1, 2, 0).reshape(b, -1, *size) for f, size in zip(vision_feats, feat_sizes)]
            for i in range(b):
                out.append(_Sam2Crop(feats[-1][i : i + 1], [f[i : i + 1] for f in feats[:-1]]))
        self._dense_pe = model.sam_prompt_encoder.get_dense_pe()
        return out

    def _transform_points(self, points: np.ndarray, crop_hw: tuple[int, int]) -> torch.Tensor:
        h, w = crop_hw
        coords = torch.as_tensor(points, dtype=torch.float32, device=self.device).clone()
        coords[..., 0] = coords[..., 0] / w
        coords[..., 1] = coords[..., 1] / h
        return coords * self.model.image_size

    def _run_decoder(
        self, state: _Sam2Crop, in_points: torch.Tensor, mask_input: torch.Tensor | None, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        labels = torch.ones(len(in_points), 1, dtype=torch.int, device=in_points.device)
        sparse, dense = model.sam_prompt_encoder(
            points=(in_points[:, None, :], labels), boxes=None, masks=mask_input
        )
        low, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=state.image_embed,
            image_pe=self._dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=len(in_points) > 1,
            high_res_features=state.high_res,
        )
        return low, iou

    def _decode(self, state: _Sam2Crop, in_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``SAM2ImagePredictor._predict`` for a batch of single foreground points, without the upsampling
        (and, with ``use_m2m``, the official one-step refinement with each mask as the mask input)."""
        low, iou = self._run_decoder(state, in_points, None, self.multimask_output)
        if not self.use_m2m:
            return low, iou
        n_out = low.shape[1]
        pts = in_points.repeat_interleave(n_out, dim=0)
        prev = torch.clamp(low.flatten(0, 1), -32.0, 32.0)[:, None]
        lows, ious = [], []
        for s in range(0, len(pts), self.points_per_batch):
            lo, io = self._run_decoder(
                state, pts[s : s + self.points_per_batch], prev[s : s + self.points_per_batch], False
            )
            lows.append(lo)
            ious.append(io)
        return torch.cat(lows).view(low.shape), torch.cat(ious).view(iou.shape)

    def _upscale(self, low: torch.Tensor, state: _Sam2Crop, crop_hw: tuple[int, int]) -> torch.Tensor:
        """``SAM2Transforms.postprocess_masks``: low-res hole / sprinkle removal, then bilinear to the crop
        size."""
        import torch.nn.functional as F

        masks = low[:, None].float()
        if self.min_mask_region_area > 0:
            masks = fill_holes_and_sprinkles(masks, self.min_mask_region_area, threshold=0.0)
        return F.interpolate(masks, crop_hw, mode="bilinear", align_corners=False)[:, 0]


def fill_holes_and_sprinkles(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> torch.Tensor:
    """SAM 2's low-res post-processing of N x 1 x h x w mask logits: background components (``<= threshold``,
    8-connected) of at most ``max_area`` pixels become ``threshold + 10``, and foreground ones of at most
    ``max_area`` become ``threshold - 10`` (both found on the input logits, as SAM 2 does). Batched on the
    logits' device (no ``_C`` extension needed).

    Args:
        logits: N x 1 x h x w mask logits.
        max_area: the largest hole / sprinkle removed, in pixels.
        threshold: the mask logit threshold.
    """
    _, hole_size = components((logits <= threshold)[:, 0])
    _, spr_size = components((logits > threshold)[:, 0])
    out = torch.where(((hole_size > 0) & (hole_size <= max_area))[:, None], threshold + 10.0, logits)
    return torch.where(((spr_size > 0) & (spr_size <= max_area))[:, None], threshold - 10.0, out)
