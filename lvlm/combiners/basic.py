"""The combiners of one image's candidates: ``best``, ``union``, ``merge`` and ``instances``."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Candidates, Instances, Selection, masks_to_boxes
from . import Combiner, candidate_scores


def _empty(candidates: Candidates, scores: np.ndarray | None = None, extra: dict | None = None) -> Selection:
    h, w = candidates.shape
    return Selection(
        np.zeros((h, w), bool), float("nan"), None, scores, dict(extra or {}), Instances.empty(h, w)
    )


@register(
    "combine", "best", description="the selector's choice; without a selector the highest-scoring candidate"
)
class BestCombiner(Combiner):
    """One mask: the selector's choice, or without a selector the candidate with the highest score
    (SAM's predicted IoU, for example)."""

    def combine(self, image, text, candidates, selection=None):
        if selection is not None:
            index = selection.index
            if index is None or len(candidates) == 0:
                return _empty(candidates, selection.scores, selection.extra)
            scores = candidate_scores(candidates, selection)
            inst = Instances.from_candidates(candidates, np.atleast_1d(index), scores, label=text)
            if isinstance(index, (list, tuple, np.ndarray)):  # a selector that chose several (its own union)
                inst = Instances(
                    np.asarray(selection.mask, bool)[None], None, [selection.score], [text or ""]
                )
            return Selection(
                np.asarray(selection.mask, bool),
                float(selection.score),
                index,
                selection.scores,
                dict(selection.extra),
                inst,
            )
        if len(candidates) == 0:
            return _empty(candidates)
        i = int(np.argmax(candidates.scores))
        return Selection(
            candidates.masks[i].copy(),
            float(candidates.scores[i]),
            i,
            None,
            {},
            Instances.from_candidates(candidates, [i], label=text),
        )


@register(
    "combine", "union", description="the union of every candidate (e.g. the masks of several box prompts)"
)
class UnionCombiner(Combiner):
    """The union of every candidate; its score is the candidates' mean score."""

    def combine(self, image, text, candidates, selection=None):
        scores = candidate_scores(candidates, selection)
        if len(candidates) == 0:
            return _empty(candidates, None if selection is None else selection.scores)
        return Selection(
            candidates.union(),
            float(np.mean(scores)),
            list(range(len(candidates))),
            None if selection is None else selection.scores,
            {},
            Instances.from_candidates(candidates, None, scores, label=text),
        )


def greedy_merge(
    masks: np.ndarray, scores: np.ndarray, margin: float = 0.01, max_overlap: float = 0.2, max_masks: int = 4
) -> list[int]:
    """The best candidate plus near-best ones that add new area, best first.

    Starting from the highest score, candidates are taken in score order while they score within ``margin``
    of the best; one is added when its overlap with the union chosen so far, as a fraction of the smaller
    of the two, is below ``max_overlap`` (a mask containing the chosen one, or a near-duplicate, is not
    added).

    Args:
        masks: N x H x W bool candidate masks.
        scores: N scores (non-finite: never chosen).
        margin: how far below the best score a candidate may score and still be added.
        max_overlap: largest overlap (intersection over the smaller mask) with the chosen union.
        max_masks: most candidates chosen.

    Returns:
        the chosen indices (empty when no score is finite).
    """
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    if not finite.any():
        return []
    best = int(np.argmax(np.where(finite, scores, -np.inf)))
    chosen = [best]
    union = masks[best].copy()
    for j in np.argsort(-np.where(finite, scores, -np.inf), kind="stable"):
        j = int(j)
        if len(chosen) >= max_masks or not finite[j] or scores[j] < scores[best] - margin:
            break
        if j == best:
            continue
        aj = int(masks[j].sum())
        inter = int(np.logical_and(masks[j], union).sum())
        if inter / max(1, min(aj, int(union.sum()))) < max_overlap:
            chosen.append(j)
            union |= masks[j]
    return chosen


@register(
    "combine", "merge", description="the best candidate plus near-best ones that add new area (two lungs)"
)
class MergeCombiner(Combiner):
    """The union of the best candidate and the near-best ones that add new area (Villarreal et al. Fig. 7:
    SAM returns the two lungs as separate masks and one mask can only hold one).

    Args:
        margin: candidates scoring within ``margin`` of the best are considered (the selector's scores where a
            selector ran, e.g. CLIP cosine similarities, else the candidates' own).
        max_overlap: a candidate is added when its overlap with the chosen union, as a fraction of the smaller
            mask, is below this.
        max_masks: most candidates united.
    """

    def __init__(self, margin: float = 0.01, max_overlap: float = 0.2, max_masks: int = 4) -> None:
        if margin < 0:
            raise ConfigError(f"merge margin={margin} must be >= 0")
        if not 0.0 <= max_overlap <= 1.0:
            raise ConfigError(f"merge max_overlap={max_overlap} must lie in [0, 1]")
        if int(max_masks) < 1:
            raise ConfigError(f"merge max_masks={max_masks} must be >= 1")
        self.margin = float(margin)
        self.max_overlap = float(max_overlap)
        self.max_masks = int(max_masks)

    def combine(self, image, text, candidates, selection=None):
        scores = candidate_scores(candidates, selection)
        sel_scores = None if selection is None else selection.scores
        extra = {} if selection is None else dict(selection.extra)
        if len(candidates) == 0 or (selection is not None and selection.index is None):
            return _empty(candidates, sel_scores, extra)
        chosen = greedy_merge(candidates.masks, scores, self.margin, self.max_overlap, self.max_masks)
        if not chosen:
            return _empty(candidates, sel_scores, extra)
        return Selection(
            candidates.masks[chosen].any(0),
            float(scores[chosen[0]]),
            chosen,
            sel_scores,
            extra,
            Instances.from_candidates(candidates, chosen, scores, label=text),
        )

    def __repr__(self) -> str:
        return (
            f"MergeCombiner(margin={self.margin}, max_overlap={self.max_overlap}, max_masks={self.max_masks})"
        )


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression on mask IoU: indices kept, highest score first.

    A mask is dropped when its IoU with a kept, higher-scoring mask exceeds ``iou_threshold``.

    Args:
        masks: N x H x W bool masks.
        scores: N scores.
        iou_threshold: the mask IoU above which the lower-scoring mask is dropped.
    """
    n = len(masks)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    flat = np.asarray(masks, bool).reshape(n, -1)
    areas = flat.sum(1)
    boxes = masks_to_boxes(masks)
    kept: list[int] = []
    for i in order:
        i = int(i)
        if kept:
            k = np.asarray(kept)
            kb = boxes[k]
            touch = (np.minimum(kb[:, 2], boxes[i, 2]) > np.maximum(kb[:, 0], boxes[i, 0])) & (
                np.minimum(kb[:, 3], boxes[i, 3]) > np.maximum(kb[:, 1], boxes[i, 1])
            )
            k = k[touch]
            if len(k):
                inter = (flat[k] & flat[i]).sum(1)
                iou = inter / np.maximum(areas[k] + areas[i] - inter, 1)
                if (iou > iou_threshold).any():
                    continue
        kept.append(i)
    return kept


@register(
    "combine",
    "instances",
    description="every candidate as an instance (score threshold, mask NMS); the mask is their union",
)
class InstancesCombiner(Combiner):
    """Every object: each candidate that passes the filters is an instance, the result's mask is their union.

    Scores are the selector's where a selector ran, else the candidates' own (SAM's predicted IoU, a
    detector's confidence). An everything-mode generator needs no selector (nor a text prompt) with this one.

    Args:
        min_score: instances scoring below this are dropped (None keeps all).
        nms_iou: mask NMS: of two instances whose masks overlap by more than this IoU, the lower-scoring one
            is dropped (None: no NMS).
        min_area: instances of fewer pixels are dropped.
        max_instances: keep at most this many, best first (None: all).
    """

    standalone = True

    def __init__(
        self,
        min_score: float | None = None,
        nms_iou: float | None = None,
        min_area: int = 0,
        max_instances: int | None = None,
    ) -> None:
        if nms_iou is not None and not 0.0 <= float(nms_iou) <= 1.0:
            raise ConfigError(f"instances nms_iou={nms_iou} must lie in [0, 1] (or be null for no NMS)")
        if int(min_area) < 0:
            raise ConfigError(f"instances min_area={min_area} must be >= 0")
        if max_instances is not None and int(max_instances) < 1:
            raise ConfigError(f"instances max_instances={max_instances} must be >= 1 (or null for all)")
        self.min_score = None if min_score is None else float(min_score)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.min_area = int(min_area)
        self.max_instances = None if max_instances is None else int(max_instances)

    def combine(self, image, text, candidates, selection=None):
        scores = candidate_scores(candidates, selection)
        sel_scores = None if selection is None else selection.scores
        extra = {} if selection is None else dict(selection.extra)
        if len(candidates) == 0:
            return _empty(candidates, sel_scores, extra)
        keep = np.isfinite(scores) & (candidates.areas > max(0, self.min_area - 1))
        if self.min_score is not None:
            keep &= scores >= self.min_score
        idx = np.nonzero(keep)[0]
        if self.nms_iou is not None and len(idx):
            idx = idx[mask_nms(candidates.masks[idx], scores[idx], self.nms_iou)]
        else:
            idx = idx[np.argsort(-scores[idx], kind="stable")]
        if self.max_instances is not None:
            idx = idx[: self.max_instances]
        if len(idx) == 0:
            return _empty(candidates, sel_scores, extra)
        chosen = [int(i) for i in idx]
        return Selection(
            candidates.masks[chosen].any(0),
            float(scores[chosen].mean()),
            chosen,
            sel_scores,
            extra,
            Instances.from_candidates(candidates, chosen, scores, label=text),
        )

    def __repr__(self) -> str:
        return (
            f"InstancesCombiner(min_score={self.min_score}, nms_iou={self.nms_iou}, "
            f"min_area={self.min_area}, "
            f"max_instances={self.max_instances})"
        )
