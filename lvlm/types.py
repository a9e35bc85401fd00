"""What passes between stages: Prompts -> Candidates -> Selection -> Result (with its Instances).

Coordinates are always in the pixel frame of the input image (x right, y down, xyxy boxes
with exclusive right/bottom edges as in segment_anything), masks are ``bool`` arrays at the
input image's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """XYXY boxes (N x 4 float32) of N x H x W bool masks; an empty mask gives [0, 0, 0, 0].

    Args:
        masks: N x H x W boolean masks (any array that converts to bool).
    """
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)  # N x H
    cols = masks.any(axis=1)  # N x W
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    boxes[:] = np.stack([x0, y0, x1, y1], axis=1)
    boxes[~nonempty] = 0
    return boxes


@dataclass
class Prompts:
    """Prompts for a prompted segmenter; K prompts give K masks.

    - ``boxes``: K x 4 xyxy, or None
    - ``points``: K x P x 2 (x, y), or None (a P x 2 array is one prompt of P points); ``point_labels``: K x P
      (1 foreground, 0 background)
    - ``text``: the text prompt, for text-conditioned segmenters (CLIPSeg)
    - ``labels``: one label per prompt where the prompter names what each box is (a detector's class), else
      None; the masks of the prompts carry them (``Candidates.labels``, then ``Result.instances.labels``)
    A prompt k uses ``boxes[k]`` and/or ``points[k]``; with both None the prompt is text only.
    """

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    text: str | None = None
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            self.labels = [str(v) for v in self.labels]
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if self.points is not None:
            pts = np.asarray(self.points, dtype=np.float32)
            if pts.ndim == 1:
                pts = pts.reshape(1, 1, 2)
            elif pts.ndim == 2:  # P x 2: one prompt made of P points (segment_anything's convention)
                pts = pts[None]
            self.points = pts
            if self.point_labels is None:
                self.point_labels = np.ones(pts.shape[:2], dtype=np.int64)
            else:
                self.point_labels = np.asarray(self.point_labels, dtype=np.int64).reshape(pts.shape[:2])
        if self.boxes is not None and self.points is not None and len(self.boxes) != len(self.points):
            raise ValueError(
                f"{len(self.boxes)} boxes but {len(self.points)} point sets; give one per prompt"
            )

    def __len__(self) -> int:
        if self.boxes is not None:
            return len(self.boxes)
        if self.points is not None:
            return len(self.points)
        return 1 if self.text else 0

    @property
    def has_geometry(self) -> bool:
        """At least one box or point prompt (what a prompted segmenter needs)."""
        return bool(
            (self.boxes is not None and len(self.boxes)) or (self.points is not None and len(self.points))
        )

    @property
    def empty(self) -> bool:
        return self.boxes is None and self.points is None and not self.text

    def validate(self, height: int, width: int) -> None:
        """Raise PromptError for malformed boxes or prompts lying wholly outside a HxW image.

        Args:
            height: image height in pixels.
            width: image width in pixels.
        """
        from .errors import PromptError

        if self.boxes is not None:
            for b in self.boxes:
                x0, y0, x1, y1 = (float(v) for v in b)
                if not np.all(np.isfinite(b)):
                    raise PromptError(f"box {b.tolist()} has non-finite coordinates")
                if x1 <= x0 or y1 <= y0:
                    raise PromptError(f"box {b.tolist()} is empty: need x0 < x1 and y0 < y1 (xyxy order)")
                if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                    raise PromptError(f"box {b.tolist()} lies outside the {width}x{height} image")
        if self.points is not None:
            pts = self.points.reshape(-1, 2)
            if not np.all(np.isfinite(pts)):
                raise PromptError("points have non-finite coordinates")
            out = (pts[:, 0] < 0) | (pts[:, 0] >= width) | (pts[:, 1] < 0) | (pts[:, 1] >= height)
            if out.any():
                raise PromptError(f"point {pts[out][0].tolist()} lies outside the {width}x{height} image")

    def clipped(self, height: int, width: int) -> Prompts:
        """Boxes clipped to the image (after ``validate``, so at least partly inside).

        Args:
            height: image height in pixels.
            width: image width in pixels.
        """
        boxes = None
        if self.boxes is not None:
            boxes = self.boxes.copy()
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return Prompts(boxes, self.points, self.point_labels, self.text, self.labels)


@dataclass
class Candidates:
    """N candidate masks of one image with where they came from.

    ``masks``: N x H x W bool at the input resolution; ``boxes``: N x 4 xyxy;
    ``scores``: the producer's confidence per mask (SAM's predicted IoU, a logit mean, ...);
    ``stability``: SAM's stability score where known; ``source``: the producing component;
    ``extra``: per-run extras (e.g. the prompts that produced the masks);
    ``labels``: one label per mask where the producer names what it found (a detector's class), else None.
    """

    masks: np.ndarray
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    stability: np.ndarray | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim == 2:
            self.masks = self.masks[None]
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be N x H x W, got shape {self.masks.shape}")
        n = len(self.masks)
        if self.boxes is None:
            self.boxes = masks_to_boxes(self.masks)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(n, 4)
        self.scores = (
            np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32).reshape(n)
        )
        if self.stability is not None:
            self.stability = np.asarray(self.stability, np.float32).reshape(n)
        if self.labels is not None:
            self.labels = [str(v) for v in self.labels]
            if len(self.labels) != n:
                raise ValueError(f"{n} masks but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.masks.shape[1:])  # type: ignore[return-value]

    @property
    def areas(self) -> np.ndarray:
        return self.masks.sum(axis=(1, 2))

    def subset(self, index) -> Candidates:
        """The candidates at ``index`` (indices or a boolean mask).

        Args:
            index: indices or a boolean mask over the N candidates.
        """
        index = np.asarray(index)
        return Candidates(
            self.masks[index],
            self.boxes[index],
            self.scores[index],
            None if self.stability is None else self.stability[index],
            self.source,
            dict(self.extra),
            None if self.labels is None else [self.labels[i] for i in np.arange(len(self))[index]],
        )

    @classmethod
    def empty(cls, height: int, width: int, source: str = "") -> Candidates:
        """No candidates (0 x H x W masks) for an image of ``height`` x ``width``.

        Args:
            height: image height in pixels.
            width: image width in pixels.
            source: the producing component's name.
        """
        return cls(np.zeros((0, height, width), bool), source=source)

    def union(self) -> np.ndarray:
        """H x W union of all masks."""
        if len(self) == 0:
            return np.zeros(self.shape, bool)
        return self.masks.any(axis=0)


@dataclass
class Instances:
    """N objects of one image: what the pipeline found, each with its own mask.

    ``masks``: N x H x W bool at the input resolution; ``boxes``: N x 4 xyxy (exclusive right / bottom edges);
    ``scores``: N confidences (the selector's score where a selector ran, else the producer's);
    ``labels``: N strings (the detector's label where it gives one, else the text prompt).
    """

    masks: np.ndarray
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"instance masks must be N x H x W, got shape {self.masks.shape}")
        n = len(self.masks)
        self.boxes = (
            masks_to_boxes(self.masks)
            if self.boxes is None
            else np.asarray(self.boxes, np.float32).reshape(n, 4)
        )
        self.scores = (
            np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32).reshape(n)
        )
        self.labels = [""] * n if self.labels is None else [str(v) for v in self.labels]
        if len(self.labels) != n:
            raise ValueError(f"{n} instance masks but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        """No instances (0 x H x W masks) for an image of ``height`` x ``width``.

        Args:
            height: image height in pixels.
            width: image width in pixels.
        """
        return cls(np.zeros((0, height, width), bool))

    @classmethod
    def from_candidates(
        cls,
        candidates: Candidates,
        index: Any = None,
        scores: np.ndarray | None = None,
        label: str | None = None,
    ) -> Instances:
        """The candidates at ``index`` (all when None) as instances.

        Args:
            candidates: the candidate masks of one image.
            index: indices (or a boolean mask) of the candidates to keep; None keeps all.
            scores: one score per candidate (all of them, e.g. a selector's), else the candidates' own.
            label: the label of candidates that carry none (the text prompt).
        """
        idx = np.arange(len(candidates)) if index is None else np.arange(len(candidates))[np.asarray(index)]
        idx = np.atleast_1d(idx).astype(np.int64)
        sc = candidates.scores if scores is None else np.asarray(scores, np.float32).reshape(len(candidates))
        if candidates.labels is not None:
            labels = [candidates.labels[i] for i in idx]
        else:
            labels = [label or ""] * len(idx)
        return cls(candidates.masks[idx], candidates.boxes[idx], sc[idx], labels)

    def to_coco(self, image_id: int | str, category_id: int = 1) -> list[dict[str, Any]]:
        """COCO results entries (``pycocotools``' ``loadRes`` format), one per instance.

        Args:
            image_id: the COCO image id the entries belong to.
            category_id: the category id written for every instance.

        Returns:
            dicts with ``image_id``, ``category_id``, ``segmentation`` (compressed RLE, ``counts`` a str),
            ``score``, ``bbox`` (xywh of the mask, as ``pycocotools.mask.toBbox``) and ``area`` (mask pixels).
        """
        from . import rle

        out = []
        for r, score in zip(rle.encode_many(self.masks), self.scores):
            out.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "segmentation": r,
                    "score": float(score),
                    "bbox": [float(v) for v in rle.to_bbox(r)],
                    "area": rle.area(r),
                }
            )
        return out


@dataclass
class Selection:
    """A selector's or combiner's answer: the mask, its score, and every candidate's score (to see why).

    A combiner also gives the ``instances`` its mask is made of.
    """

    mask: np.ndarray
    score: float
    index: int | list[int] | None = None
    scores: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    instances: Instances | None = None


@dataclass
class Result:
    """What ``Pipeline.__call__`` returns for one image and prompt."""

    mask: np.ndarray  # H x W bool at the input resolution
    score: float
    prompt: str | None
    candidates: Candidates
    scores: np.ndarray | None = None  # selector score of every candidate
    index: int | list[int] | None = None  # chosen candidate(s)
    prompts: Prompts | None = None  # box/point prompts given or derived (saliency)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. saliency map
    instances: Instances | None = (
        None  # the objects the mask is made of (all of them with combine: instances)
    )

    def __post_init__(self) -> None:
        if self.instances is None:
            h, w = np.asarray(self.mask).shape
            self.instances = Instances.empty(h, w)

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def to_coco(self, image_id: int | str, category_id: int = 1) -> list[dict[str, Any]]:
        """The instances as COCO results entries; see :meth:`Instances.to_coco`.

        Args:
            image_id: the COCO image id the entries belong to.
            category_id: the category id written for every instance.
        """
        return self.instances.to_coco(image_id, category_id)


@dataclass
class Sample:
    """One evaluation item from a dataset loader: an image, a text prompt and its ground-truth mask.

    ``image`` is a path or an H x W x 3 uint8 array; ``mask`` an H x W bool array (or a path, read lazily
    with :func:`lvlm.io.load_mask`); ``tags`` hold e.g. ``{"difficulty": "hard"}``, ``{"class": "crack"}``,
    ``{"defect": "hole"}`` for per-group metrics; ``prompts`` lists alternative phrasings when known.
    """

    id: str
    image: Any
    prompt: str
    mask: Any
    tags: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    box: np.ndarray | None = None  # optional xyxy prompt (e.g. the ground-truth box for prompted segmenters)
