"""The prompt-strategy comparison of docs/benchmarks.md: prompted segmenters scored per way of prompting.

The prompts (``center``, ``edge``, ``grid4``, ``box``) are derived from each object's mask by
:mod:`lvlm.data.prompts`.

:func:`evaluate_prompt_strategies` runs any number of prompted segmenters (e.g. a base and a specialised
decoder) on (image, instance masks) with every strategy, one ``segment`` call per image and strategy,
and returns one row per (model, strategy) with means and standard deviations of IoU, Dice and
boundary precision / recall / F1; :func:`format_table` prints those rows as a markdown table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..data.prompts import STRATEGIES, make_prompts
from ..metrics import segmentation_metrics

LABELS = {
    "center": "Center-of-Mass (Single)",
    "edge": "Edge (Single)",
    "grid4": "Multi-Point Grid (4 pts)",
    "box": "Box (tight)",
}
METRICS = ("iou", "dice", "boundary_precision", "boundary_recall", "boundary_f1")


def score_masks(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> list[dict[str, float]]:
    """IoU, Dice and boundary precision / recall / F1 (within ``tolerance`` px) of K predicted masks
    (K x H x W) against their ground truth, with :mod:`lvlm.metrics` (one batched pass).

    Args:
        pred: K x H x W predicted masks.
        gt: K x H x W ground-truth masks, one per prediction.
        tolerance: the boundary distance tolerance in pixels.
    """
    m = segmentation_metrics(np.asarray(pred, bool), np.asarray(gt, bool), tolerance=tolerance)
    return [{k: float(m[k][i]) for k in METRICS} for i in range(len(pred))]


def evaluate_prompt_strategies(
    segmenters: Mapping[str, Any],
    images: Iterable[tuple[np.ndarray, np.ndarray]],
    strategies: Sequence[str] = STRATEGIES,
    tolerance: float = 2.0,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Compare segmenters and prompt strategies on (image, K x H x W instance masks) pairs.

    ``segmenters`` maps a model name to a :class:`~lvlm.components.PromptedSegmenter` (anything with
    ``segment(image, prompts) -> Candidates`` returning one mask per prompt). Returns ``(rows, per_item)``:
    one summary row per (model, strategy) with ``<metric>_mean`` / ``<metric>_std`` and ``num_samples``,
    and the per-object scores they were computed from.

    Args:
        segmenters: model name -> prompted segmenter.
        images: ``(image, instance masks)`` pairs; empty instance masks are dropped.
        strategies: the prompt strategies to compare (a subset of ``STRATEGIES``).
        tolerance: the boundary distance tolerance in pixels.
        progress: show a progress bar.
    """
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown prompt strategy {s!r}; valid strategies: {', '.join(STRATEGIES)}")
    from tqdm.auto import tqdm

    per_item: list[dict[str, Any]] = []
    for i, (image, masks) in enumerate(tqdm(list(images), desc="prompt strategies", disable=not progress)):
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim == 2:
            masks = masks[None]
        masks = masks[masks.reshape(len(masks), -1).any(1)]
        if len(masks) == 0:
            continue
        for strategy in strategies:
            prompts = make_prompts(masks, strategy)
            for name, seg in segmenters.items():
                pred = seg.segment(image, prompts).masks
                if len(pred) != len(masks):
                    raise ValueError(f"{name} returned {len(pred)} masks for {len(masks)} prompts")
                for k, scores in enumerate(score_masks(pred, masks, tolerance)):
                    per_item.append({"model": name, "strategy": strategy, "image": i, "object": k, **scores})
    return summarise(per_item, strategies, list(segmenters)), per_item


def summarise(
    per_item: list[dict[str, Any]],
    strategies: Sequence[str] = STRATEGIES,
    models: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per (model, strategy) means and (population) standard deviations of the per-object scores.

    Args:
        per_item: the per-object score rows of :func:`evaluate_prompt_strategies`.
        strategies: the strategies to report, in this order.
        models: the models to report, in this order (None: first-seen order).
    """
    from .metrics import summarize

    groups = summarize(per_item, METRICS, by=("model", "strategy"))
    models = models if models is not None else list(dict.fromkeys(r["model"] for r in per_item))
    rows = []
    for name in models:
        for strategy in strategies:
            g = groups.get((name, strategy))
            if g is None:
                continue
            row: dict[str, Any] = {"model": name, "prompt_strategy": strategy}
            row.update({k: v for k, v in g.items() if k != "n"})
            row["num_samples"] = g["n"]
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], digits: int = 3) -> str:
    """A markdown table of :func:`summarise` rows (mean ± std per metric).

    Args:
        rows: the rows of :func:`summarise`.
        digits: decimals of the means and standard deviations.
    """
    head = [
        "model",
        "prompt strategy",
        "IoU",
        "Dice",
        "boundary precision",
        "boundary recall",
        "boundary F1",
        "n",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], LABELS.get(r["prompt_strategy"], r["prompt_strategy"])]
        cells += [f"{r[f'{m}_mean']:.{digits}f} ± {r[f'{m}_std']:.{digits}f}" for m in METRICS]
        cells.append(str(r["num_samples"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
