"""Aggregation of benchmark result rows: means, standard deviations and counts per group.

The metric maths (IoU, Dice, boundary F1, instance matching, COCO AP) lives in :mod:`lvlm.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..metrics import METRICS

__all__ = ["METRICS", "mean_std", "summarize"]


# --- aggregation ------------------------------------------------------------------------------------


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, population std (ddof = 0), count) of the finite values; NaNs when there are none.

    Args:
        values: numbers; None and non-finite values are skipped.
    """
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def summarize(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS, by: str | Sequence[str] | None = None
) -> dict[Any, dict[str, float]]:
    """Mean / std / n of ``metrics`` over ``rows`` (dicts), per group of the ``by`` key(s).

    ``by`` names row keys or ``tags.<name>`` (e.g. ``"tags.difficulty"``); rows missing the key go to
    group ``None``. Returns ``{group: {"<metric>_mean": .., "<metric>_std": .., "n": ..}}``;
    without ``by`` the single group is ``"all"``.

    Args:
        rows: the result rows (dicts).
        metrics: the metric keys to summarise.
        by: one row key, several, or None for a single group.
    """
    keys = [by] if isinstance(by, str) else list(by or [])
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        g = tuple(_lookup(r, k) for k in keys) if keys else "all"
        if keys and len(keys) == 1:
            g = g[0]
        groups.setdefault(g, []).append(r)
    out = {}
    for g, rs in groups.items():
        d: dict[str, float] = {}
        n = 0
        for m in metrics:
            mean, std, n_m = mean_std(r.get(m) for r in rs)
            d[f"{m}_mean"], d[f"{m}_std"] = mean, std
            n = max(n, n_m)
        d["n"] = n
        out[g] = d
    return out


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    cur: Any = row
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur
