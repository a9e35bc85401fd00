"""``sam_fast``: SAM's automatic mask generator, batched on the model's device, giving the official masks.

It follows ``segment_anything.SamAutomaticMaskGenerator`` step by step (same point grids and crops, multimask
output, predicted-IoU and stability-score filters, box NMS within each crop, uncropping, crop-level NMS that
prefers smaller crops, ``min_mask_region_area`` hole / island removal) and calls the same ``segment_anything``
functions for each numeric step, so the masks are the official ones (bit for bit in fp32 on one device). What
differs is how the work is laid out:

- the crops of an image (and, with :meth:`~SamFastGenerator.generate_batch`, several images) go through the
  image encoder together, ``encoder_batch_size`` at a time, optionally under bf16 autocast (``bf16=True``;
  then the masks are close to, no longer bit-identical with, the fp32 ones);
- point prompts are decoded ``points_per_batch`` at a time (default 256 instead of 64); the predicted-IoU
  filter runs before the masks are upsampled; upsampling, stability score, thresholding and boxes run in
  chunks of at most ``chunk_pixels`` full-resolution pixels, and only the low-resolution logits of the masks
  that pass are kept (no run-length encoding of every mask, no per-mask Python loop);
- the full-resolution masks of the masks left after NMS are computed once at the end, on the device;
- ``min_mask_region_area`` uses a batched connected-component labelling on the device (8-connectivity, see
  :func:`lvlm.generators.amg_utils.label_components`) instead of one ``cv2`` call per mask, so OpenCV is not
  needed.

One documented difference remains: when every island of a mask is smaller than ``min_mask_region_area`` and
two of them tie for the largest, the official code keeps the one OpenCV labels first, this one the one whose
first pixel comes first in raster order.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..components import MaskGenerator, resolve_device
from ..errors import ConfigError
from ..io import load_image
from ..models.mask_decoding import decode_many, sam_postprocess_masks, supports
from ..registry import register
from ..rle import encode_many
from ..types import Candidates
from .amg_settings import AmgSettings, check_positive_int
from .amg_utils import boxes_from_projections, remove_small_regions_batched

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class FastAutomaticMaskGenerator(MaskGenerator):
    """The batched everything-mode engine shared by ``sam_fast`` and ``sam2_fast``.

    A model family supplies four steps: ``_encode`` (crops -> per-crop states), ``_transform_points``
    (crop-frame points -> model input), ``_decode`` (state, points -> low-res logits and predicted IoU) and
    ``_upscale`` (low-res logits -> logits at crop resolution), plus ``mask_threshold``.
    """

    name = "fast_amg"
    multimask_output = True

    def _setup_knobs(
        self,
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
        build_point_grids,
    ) -> None:
        self.device = resolve_device(device)
        on_gpu = torch.device(self.device).type != "cpu"
        if points_per_batch is None:
            points_per_batch = 256 if on_gpu else 64
        st = AmgSettings.from_knobs(locals())
        check_positive_int("encoder_batch_size", encoder_batch_size)
        if output_mode not in OUTPUT_MODES:
            raise ConfigError(f"output_mode={output_mode!r}; valid values: {', '.join(OUTPUT_MODES)}")
        self.settings = st
        if st.points_per_side is not None:
            self.point_grids = build_point_grids(
                st.points_per_side, st.crop_n_layers, st.crop_n_points_downscale_factor
            )
        else:
            self.point_grids = st.point_grids
        for name in (
            "points_per_side",
            "points_per_batch",
            "pred_iou_thresh",
            "stability_score_thresh",
            "stability_score_offset",
            "box_nms_thresh",
            "crop_n_layers",
            "crop_nms_thresh",
            "crop_overlap_ratio",
            "crop_n_points_downscale_factor",
            "min_mask_region_area",
        ):
            setattr(self, name, getattr(st, name))  # the engine reads them as attributes
        self.output_mode = output_mode
        self.bf16 = bool(bf16)
        self.encoder_batch_size = int(encoder_batch_size)
        self.chunk_pixels = int(chunk_pixels or (2**27 if on_gpu else 2**24))
        self.progress = progress
        self.last_timings: dict[str, float] = {}

    # ------------------------------------------------------------------ family hooks
    mask_threshold = 0.0
    small_regions_full_res = True  # min_mask_region_area: SAM's hole / island removal on the final masks
    points_dtype = torch.float64  # dtype of the crop-frame points kept with each mask (as the official code)

    def _encode(self, crops: list[np.ndarray]) -> list[Any]:
        raise NotImplementedError

    def _transform_points(self, points: np.ndarray, crop_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, state: Any, in_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _upscale(self, low: torch.Tensor, state: Any, crop_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def _full_res_cost(self, crop_hw: tuple[int, int]) -> int:
        """Pixels of full-resolution work per mask (bounds the chunk size)."""
        return crop_hw[0] * crop_hw[1]

    # -------------------------------------------------------------- MaskGenerator hooks (cached by the base)
    def _generate(self, image: np.ndarray) -> Candidates:
        return self._generate_many([image])[0]

    def _generate_many(self, images: Sequence[np.ndarray]) -> list[Candidates]:
        """Candidates of several images; the crops of all of them share batched image-encoder calls."""
        return [self._to_candidates(d) for d in self._run(images)]

    def generate_records(self, image: Any) -> list[dict[str, Any]]:
        """The official generator's output: a list of dicts with ``segmentation`` (per ``output_mode``),
        ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score`` and ``crop_box``
        (XYWH).

        Args:
            image: an H x W x 3 uint8 image (or anything :func:`~lvlm.io.load_image` reads).
        """
        d = self._run([load_image(image)])[0]
        masks = d["masks"]
        n = len(masks)
        areas = masks.flatten(1).sum(1).tolist() if n else []
        boxes = _xyxy_to_xywh(d["boxes"].cpu().numpy())
        crops = _xyxy_to_xywh(d["crop_boxes"].cpu().numpy())
        if self.output_mode == "binary_mask":
            segs: list[Any] = list(masks.cpu().numpy())
        else:
            segs = encode_many(masks, compressed=self.output_mode == "coco_rle")
        iou = d["iou_preds"].float().cpu().numpy()
        stab = d["stability_score"].float().cpu().numpy()
        pts = d["points"].cpu().numpy()
        return [
            {
                "segmentation": segs[i],
                "area": int(areas[i]),
                "bbox": boxes[i].tolist(),
                "predicted_iou": float(iou[i]),
                "point_coords": [pts[i].tolist()],
                "stability_score": float(stab[i]),
                "crop_box": crops[i].tolist(),
            }
            for i in range(n)
        ]

    # ------------------------------------------------------------------ the pipeline
    @torch.inference_mode()
    def _run(self, images: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        from segment_anything.utils.amg import generate_crop_boxes

        timings = {"encoder": 0.0, "decoder": 0.0, "masks": 0.0, "small_regions": 0.0}
        jobs = []  # (image index, crop box, layer index), in the official crop order
        for i, im in enumerate(images):
            crop_boxes, layer_idxs = generate_crop_boxes(
                im.shape[:2], self.crop_n_layers, self.crop_overlap_ratio
            )
            jobs += [(i, box, layer) for box, layer in zip(crop_boxes, layer_idxs)]

        t0 = time.perf_counter()
        states = self._encode([images[i][b[1] : b[3], b[0] : b[2]] for i, b, _ in jobs])
        self._sync()
        timings["encoder"] = time.perf_counter() - t0

        per_image: list[list[dict[str, torch.Tensor]]] = [[] for _ in images]
        bar = _progress(len(jobs), self.progress, self.name)
        for j, (i, crop_box, layer) in enumerate(jobs):
            t0 = time.perf_counter()
            per_image[i].append(self._process_crop(states[j], crop_box, layer, images[i].shape[:2], j))
            self._sync()
            timings["decoder"] += time.perf_counter() - t0
            bar.update(1)
        bar.close()

        out = []
        for i, im in enumerate(images):
            t0 = time.perf_counter()
            data = self._crop_nms(_cat(per_image[i]))
            crop_of = {j: (b, states[j]) for j, (ii, b, _) in enumerate(jobs) if ii == i}
            data["masks"] = self._final_masks(data, crop_of, *im.shape[:2])
            del data["low_res"]
            self._sync()
            timings["masks"] += time.perf_counter() - t0
            if self.small_regions_full_res and self.min_mask_region_area > 0 and len(data["masks"]):
                t0 = time.perf_counter()
                data = self._postprocess_small_regions(data)
                self._sync()
                timings["small_regions"] += time.perf_counter() - t0
            out.append(data)
        timings["total"] = sum(timings.values())
        timings["images"] = len(images)
        self.last_timings = timings
        return out

    def _process_crop(
        self, state: Any, crop_box: list[int], layer: int, orig_size: tuple[int, int], crop_index: int
    ) -> dict[str, torch.Tensor]:
        """All points of one crop: decode, IoU filter, stability, boxes, edge filter, NMS (official order)."""
        from segment_anything.utils.amg import calculate_stability_score, is_box_near_crop_edge
        from torchvision.ops.boxes import batched_nms

        dev = self.device
        x0, y0, x1, y1 = crop_box
        crop_hw = (y1 - y0, x1 - x0)
        orig_h, orig_w = orig_size
        full_image = list(crop_box) == [0, 0, orig_w, orig_h]
        points = self.point_grids[layer] * np.array(crop_hw)[None, ::-1]  # float64, crop frame (as official)
        in_points = self._transform_points(points, crop_hw)
        points_t = torch.as_tensor(points, dtype=self.points_dtype, device=dev)
        thr = self.mask_threshold
        per_chunk = max(1, self.chunk_pixels // self._full_res_cost(crop_hw))

        kept: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("low_res", "iou_preds", "stability_score", "boxes", "points")
        }
        empty_low = None
        for s in range(0, len(in_points), self.points_per_batch):
            low, iou = self._decode(state, in_points[s : s + self.points_per_batch])
            n_out = low.shape[1]
            low, iou = low.flatten(0, 1), iou.flatten(0, 1)
            empty_low = low[:0]
            pidx = torch.arange(s, s + len(low) // n_out, device=dev).repeat_interleave(n_out)
            if self.pred_iou_thresh > 0.0:  # before upsampling: the official filters after, same result
                keep = iou > self.pred_iou_thresh
                low, iou, pidx = low[keep], iou[keep], pidx[keep]
            stab_parts, box_parts = [], []
            for c in range(0, len(low), per_chunk):
                m = self._upscale(low[c : c + per_chunk], state, crop_hw)
                stab_parts.append(calculate_stability_score(m, thr, self.stability_score_offset))
                # = batched_mask_to_box(m > thr), from the row / column maxima (no full-size bool mask)
                box_parts.append(boxes_from_projections(m.amax(-1) > thr, m.amax(-2) > thr))
                del m
            if not stab_parts:
                continue
            stab, boxes = torch.cat(stab_parts), torch.cat(box_parts)
            keep = torch.ones_like(stab, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                keep &= stab >= self.stability_score_thresh
            if not full_image:  # (always False on the full image)
                keep &= ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            kept["low_res"].append(low[keep])
            kept["iou_preds"].append(iou[keep])
            kept["stability_score"].append(stab[keep])
            kept["boxes"].append(boxes[keep])
            kept["points"].append(points_t[pidx[keep]])
        if kept["low_res"]:
            data = {k: torch.cat(v) for k, v in kept.items()}
        else:
            data = {
                "low_res": empty_low,
                "iou_preds": torch.zeros(0, device=dev),
                "stability_score": torch.zeros(0, device=dev),
                "boxes": torch.zeros(0, 4, dtype=torch.long, device=dev),
                "points": torch.zeros(0, 2, dtype=points_t.dtype, device=dev),
            }
        keep = batched_nms(
            data["boxes"].float(),
            data["iou_preds"],
            torch.zeros(len(data["boxes"]), device=dev),
            iou_threshold=self.box_nms_thresh,
        )
        data = {k: v[keep] for k, v in data.items()}
        offset = torch.tensor([x0, y0], device=dev)
        data["boxes"] = data["boxes"] + offset.repeat(2)[None]
        data["points"] = data["points"] + offset[None]
        data["crop_boxes"] = torch.tensor([crop_box], dtype=torch.long, device=dev).expand(len(keep), 4)
        data["crop_index"] = torch.full((len(keep),), crop_index, dtype=torch.long, device=dev)
        return data

    def _crop_nms(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Duplicates between crops: NMS preferring masks from smaller crops (the official rule)."""
        from torchvision.ops.boxes import batched_nms, box_area

        if self.crop_n_layers == 0 or len(data["boxes"]) == 0:
            return data
        scores = 1 / box_area(data["crop_boxes"])
        keep = batched_nms(
            data["boxes"].float(),
            scores,
            torch.zeros(len(scores), device=scores.device),
            iou_threshold=self.crop_nms_thresh,
        )
        return {k: v[keep] for k, v in data.items()}

    def _final_masks(
        self, data: dict[str, torch.Tensor], crop_of: dict[int, Any], h: int, w: int
    ) -> torch.Tensor:
        """Full-resolution bool masks of the survivors, recomputed from their low-res logits, in the image
        frame."""
        n = len(data["low_res"])
        masks = torch.zeros(n, h, w, dtype=torch.bool, device=self.device)
        if n == 0:
            return masks
        crop_index = data["crop_index"]
        for j in torch.unique(crop_index).tolist():  # one pass per crop, batched within it
            (x0, y0, x1, y1), state = crop_of[j]
            crop_hw = (y1 - y0, x1 - x0)
            idx = torch.nonzero(crop_index == j).flatten()
            per_chunk = max(1, self.chunk_pixels // self._full_res_cost(crop_hw))
            for c in range(0, len(idx), per_chunk):
                sel = idx[c : c + per_chunk]
                masks[sel, y0:y1, x0:x1] = (
                    self._upscale(data["low_res"][sel], state, crop_hw) > self.mask_threshold
                )
        return masks

    def _postprocess_small_regions(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fill small holes, drop small islands (as ``remove_small_regions``), then NMS preferring unchanged
        masks."""
        from segment_anything.utils.amg import batched_mask_to_box
        from torchvision.ops.boxes import batched_nms

        masks, changed = remove_small_regions_batched(
            data["masks"], self.min_mask_region_area, chunk_pixels=max(1, self.chunk_pixels // 4)
        )
        boxes = batched_mask_to_box(masks)
        scores = (~changed).float()
        # the official code runs this NMS on CPU tensors; so does this, so that ties (scores are 0/1) break
        # alike
        keep = batched_nms(
            boxes.float().cpu(),
            scores.cpu(),
            torch.zeros(len(boxes)),
            iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh),
        ).to(masks.device)
        data = {k: v[keep] for k, v in data.items() if k != "masks"}
        data["masks"] = masks[keep]
        data["boxes"] = boxes[keep]
        return data

    # ------------------------------------------------------------------ helpers
    def _to_candidates(self, d: dict[str, torch.Tensor]) -> Candidates:
        masks = d["masks"]
        boxes = d["boxes"].float()
        if len(boxes):  # inclusive (segment_anything) -> exclusive right / bottom edges (lvlm.types)
            boxes[:, 2:] += masks.flatten(1).any(1)[:, None].to(boxes)
        extra = {
            "point_coords": d["points"].float().cpu().numpy(),
            "crop_boxes": _xyxy_to_xywh(d["crop_boxes"].cpu().numpy()).astype(np.float32),  # XYWH, as SAM's
            "timings": dict(self.last_timings),
        }
        return Candidates(
            masks=masks.cpu().numpy(),
            boxes=boxes.cpu().numpy(),
            scores=d["iou_preds"].float().cpu().numpy(),
            stability=d["stability_score"].float().cpu().numpy(),
            source=self.source,
            extra=extra,
        )

    def _sync(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)


@register(
    "generator",
    "sam_fast",
    description="SAM automatic masks (the official ones), batched on device (speed: docs/performance.md)",
    source="segment_anything; SAM checkpoints from dl.fbaipublicfiles.com (Apache-2.0)",
)
class SamFastGenerator(FastAutomaticMaskGenerator):
    """Everything-mode SAM giving ``SamAutomaticMaskGenerator``'s masks with batched device-side work.

    ``model_type`` / ``checkpoint`` / ``device`` as for the ``sam`` generator (see
    :func:`lvlm.models.sam.build_sam`); the knobs from ``points_per_side`` to ``output_mode`` are the
    official ones with the official defaults except ``points_per_batch`` (default 256 on a GPU, 64 on the CPU,
    where larger batches only cost memory: the decoder repeats the image embedding per prompt). Extra knobs:
    ``bf16`` (bf16
    autocast of the image encoder), ``encoder_batch_size`` (crops / images per encoder call),
    ``chunk_pixels`` (full-resolution pixels processed at once; default 2**27 on GPU, 2**24 on CPU),
    ``model`` (an already-built ``segment_anything`` ``Sam``, which ``model_type`` / ``checkpoint`` then do
    not describe), ``progress`` (a bar over crops) and ``backend``: ``torch`` (default: the official masks bit
    for bit with the official point batch) or ``onnxruntime`` (CPU only: the image encoder, unless over
    ONNX's 2 GB limit as vit_h's, and the mask decoder run in ONNX Runtime, exported once and cached under
    ``$LVLM_HOME/onnx``; masks equal the torch backend's up to float rounding; speed against the
    official generator: docs/performance.md; the given ``model`` itself
    is not changed, and weights loaded into it later do not reach the exported copies: build the generator
    again).

    Args:
        model_type: the SAM variant: ``vit_h``, ``vit_l``, ``vit_b``, ``mobilesam``, ``medsam`` or
            ``vit_tiny`` (random, for tests).
        checkpoint: ``default`` (the official weights), a path, or None / ``random`` for random weights.
        device: ``auto``, ``cpu``, ``cuda``...
        points_per_side: points along each side of the prompt grid (``points_per_side``² points per crop).
        points_per_batch: point prompts per mask-decoder call (None: 256 on a GPU, 64 on the CPU).
        pred_iou_thresh: masks with a lower predicted IoU are dropped.
        stability_score_thresh: masks with a lower stability score are dropped.
        stability_score_offset: the shift of the mask threshold used for the stability score.
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
        bf16: run the image encoder under bf16 autocast.
        encoder_batch_size: crops / images per image-encoder call.
        chunk_pixels: full-resolution mask pixels processed at once (default 2**27 on a GPU, 2**24 on the
            CPU).
        model: an already built ``segment_anything`` ``Sam`` (``model_type`` / ``checkpoint`` then do not
            describe it).
        progress: show a progress bar over crops.
        backend: ``torch`` or ``onnxruntime`` (see above).
    """

    name = "sam_fast"

    def __init__(
        self,
        model_type: str = "vit_h",
        checkpoint: Any = "default",
        device: str = "auto",
        points_per_side: int | None = 32,
        points_per_batch: int | None = None,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        bf16: bool = False,
        encoder_batch_size: int = 4,
        chunk_pixels: int | None = None,
        model: Any = None,
        progress: bool = False,
        backend: str = "torch",
    ) -> None:
        from segment_anything.utils.amg import build_all_layer_point_grids
        from segment_anything.utils.transforms import ResizeLongestSide

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
        if backend not in ("torch", "onnxruntime"):  # before any weights are loaded
            raise ConfigError(f"backend={backend!r}; valid: torch, onnxruntime")
        if backend == "onnxruntime":
            from ..models.onnx import resolve_backend

            resolve_backend(
                "onnxruntime", self.device, option="backend"
            )  # CPU and lvlm[onnx], or a clear error
        self.source = "sam_fast" if model is not None else f"sam_fast:{model_type}"
        if model is None:
            from ..models.sam import build_sam

            model = build_sam(model_type, checkpoint, device=self.device)
        self.model = model.to(self.device).eval()
        self.model_type = model_type
        self.mask_threshold = float(self.model.mask_threshold)
        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)
        from segment_anything.modeling import Sam

        # the exact-equivalent cropped upsampling applies to segment_anything's own postprocess_masks
        self._own_postprocess = getattr(type(self.model), "postprocess_masks", None) is Sam.postprocess_masks
        self._dense_pe: torch.Tensor | None = None
        self.backend = backend
        self._ort_encoder = self._ort_decoder = None
        if backend == "onnxruntime":
            self._setup_onnx()

    def _setup_onnx(self) -> None:
        """ONNX Runtime sessions for the encoder (unless it is over 2 GB: vit_h's stays in torch, with a
        warning) and the prompt-to-mask decoder (any number of points per call)."""
        import copy

        from ..models.onnx import OnnxModule, onnx_module
        from ..models.sam import fuse_conv_bn, onnx_encoder

        m, label = self.model, self.source.split(":")[-1]
        enc = m.image_encoder
        if isinstance(enc, OnnxModule):  # e.g. the model of a segmenter already on ONNX Runtime
            self._ort_encoder = enc
        elif sum(t.numel() * t.element_size() for t in enc.state_dict().values()) < 1.9e9:
            if any(type(x).__name__ == "Conv2d_BN" for x in enc.modules()):
                enc = fuse_conv_bn(
                    copy.deepcopy(enc)
                )  # TinyViT: folded for inference; the given model unchanged
            self._ort_encoder = onnx_encoder(enc, label)
        else:
            warnings.warn(
                f"the {label} image encoder is over ONNX's 2 GB limit: it runs in torch, the mask decoder "
                "in ONNX Runtime",
                stacklevel=3,
            )
        if self.bf16 and self._ort_encoder is not None:
            raise ConfigError(
                "bf16 applies to a torch encoder; this one runs in ONNX Runtime: set bf16: false"
            )
        pe = m.prompt_encoder
        c, (h, w) = pe.embed_dim, pe.image_embedding_size
        example = (
            torch.zeros(1, c, h, w),
            pe.get_dense_pe().detach(),
            torch.zeros(self.points_per_batch, 2, c),
        )
        self._ort_decoder = onnx_module(
            _PointDecoder(m.prompt_encoder, m.mask_decoder, self.multimask_output),
            example,
            f"{label}-decoder",
            dynamic_axes={"input2": {0: "points"}},
        )

    def _encode(self, crops: list[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Image embeddings of all crops, ``encoder_batch_size`` per call (each as
        ``SamPredictor.set_image``)."""
        model = self.model
        inputs, sizes = [], []
        for crop in crops:
            if model.image_format != "RGB":
                crop = crop[..., ::-1]
            x = self.transform.apply_image(crop)
            sizes.append(tuple(x.shape[:2]))
            t = torch.as_tensor(x, device=self.device).permute(2, 0, 1).contiguous()[None]
            inputs.append(model.preprocess(t))
        feats = []
        dev_type = torch.device(self.device).type
        for k in range(0, len(inputs), self.encoder_batch_size):
            batch = torch.cat(inputs[k : k + self.encoder_batch_size])
            if self._ort_encoder is not None:
                f = self._ort_encoder(batch)
            else:
                with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=self.bf16):
                    f = model.image_encoder(batch)
            feats.append(f.float())
        feats = torch.cat(feats)
        self._dense_pe = model.prompt_encoder.get_dense_pe()
        return [(feats[j : j + 1], sizes[j]) for j in range(len(crops))]

    def _transform_points(self, points: np.ndarray, crop_hw: tuple[int, int]) -> torch.Tensor:
        return torch.as_tensor(
            self.transform.apply_coords(points, crop_hw), device=self.device
        )  # float64 as official

    def _decode(self, state, in_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``SamPredictor.predict_torch`` for a batch of single foreground points, without the upsampling."""
        model = self.model
        labels = torch.ones(len(in_points), 1, dtype=torch.int, device=in_points.device)
        if self._ort_decoder is None and supports(model.mask_decoder):  # same function, less work
            index = torch.zeros(len(in_points), dtype=torch.long, device=in_points.device)
            return decode_many(
                model.prompt_encoder,
                model.mask_decoder,
                state[0],
                index,
                points=in_points[:, None, :],
                labels=labels,
                multimask=self.multimask_output,
            )
        sparse, dense = model.prompt_encoder(points=(in_points[:, None, :], labels), boxes=None, masks=None)
        if self._ort_decoder is not None:  # exported with a free number of points
            return self._ort_decoder(state[0], self._dense_pe, sparse)
        return model.mask_decoder(
            image_embeddings=state[0],
            image_pe=self._dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output,
        )

    def _upscale(self, low: torch.Tensor, state, crop_hw: tuple[int, int]) -> torch.Tensor:
        """``Sam.postprocess_masks`` of N x h x w logits -> N x H x W (crop resolution), same values."""
        input_size = state[1]
        if not self._own_postprocess:
            return self.model.postprocess_masks(low[:, None], input_size, crop_hw)[:, 0]
        return sam_postprocess_masks(low[:, None], self.model.image_encoder.img_size, input_size, crop_hw)[
            :, 0
        ]

    def _full_res_cost(self, crop_hw: tuple[int, int]) -> int:
        side = self.model.image_encoder.img_size
        return crop_hw[0] * crop_hw[1] + side * side


class _PointDecoder(torch.nn.Module):
    """SAM's mask decoder on sparse prompt embeddings, the dense 'no mask' embedding made inside (so the ONNX
    export does not take a B x C x h x w input): what ``sam_fast`` runs in ONNX Runtime."""

    def __init__(self, prompt_encoder, mask_decoder, multimask: bool) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder, self.multimask = prompt_encoder, mask_decoder, bool(multimask)
        self.onnx_key = f"multimask={self.multimask}"  # part of the export's cache key

    def forward(self, image_embeddings, image_pe, sparse):
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            sparse.shape[0], -1, image_embeddings.shape[-2], image_embeddings.shape[-1]
        )
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
        )


def _xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    b = np.array(b, copy=True).reshape(-1, 4)
    b[:, 2:] -= b[:, :2]
    return b


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, name: str):
    if not enabled or total <= 1:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} crops", unit="crop")
