"""COCO val2017 instances: one object per image with its category name as the prompt, tagged by
difficulty.

Villarreal et al. evaluate 100 hand-picked val2017 images, 25 per human-judged difficulty level; that list is
not public. :func:`make_selection` builds a comparable 100-image, 4-level selection from objective cues
(number of instances, the object's area fraction, background clutter as edge density), written by
``scripts/make_coco_selection.py`` and read back with ``selection=``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample
from .base import Dataset, not_found, subsample

URL = "https://cocodataset.org/#download (2017 Val images + 2017 Train/Val annotations)"
LAYOUT = (
    "  ROOT/\n"
    "    annotations/instances_val2017.json\n"
    "    val2017/000000000139.jpg ...\n"
    "  selection file (optional): CSV with columns image_id,annotation_id,difficulty "
    "(scripts/make_coco_selection.py)"
)
LEVELS = ("easy", "medium", "hard", "very hard")


def _coco(ann_file: Path):
    from ..optional import require

    coco_mod = require("pycocotools.coco", "the COCO dataset")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return coco_mod.COCO(str(ann_file))


def read_selection(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a selection file (CSV or JSON list) with ``image_id``, ``annotation_id``, ``difficulty``.

    Args:
        path: the selection file (``.json``: a list of objects; otherwise CSV).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise not_found("COCO selection", None, f"no selection file {str(path)!r}", LAYOUT, URL)
    if path.suffix.lower() == ".json":
        rows = json.loads(path.read_text())
    else:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(
                {
                    "image_id": int(r["image_id"]),
                    "annotation_id": int(r["annotation_id"]),
                    "difficulty": str(r.get("difficulty", "") or ""),
                }
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"{path}: row {i + 1} needs integer image_id and annotation_id: {exc}"
            ) from None
    return out


@register(
    "dataset",
    "coco",
    description="COCO val2017 objects, category name as prompt, difficulty tags",
    source=URL,
)
class COCOObjects(Dataset):
    """COCO instances of ``split`` (default val2017): one sample per selected (image, annotation).

    With ``selection`` (a file of image_id, annotation_id, difficulty) those objects, tagged
    ``{"difficulty": ..., "category": ...}``; without it every non-crowd object of at least ``min_area``
    pixels (sub-sample with ``n`` / ``seed``). The ground truth is the object's instance mask.

    Args:
        root: the COCO folder (``annotations/`` and one image folder per split).
        selection: a selection file (see :func:`read_selection`), or None for every object.
        split: the split, e.g. ``val2017``.
        n: sub-sample this many objects (None: all).
        seed: the random seed of the sub-sample.
        min_area: the smallest object area in pixels, without a selection.
    """

    name = "coco"

    def __init__(
        self,
        root: str,
        selection: str | None = None,
        split: str = "val2017",
        n: int | None = None,
        seed: int = 0,
        min_area: float = 0.0,
    ):
        self.root = Path(root).expanduser()
        ann_file = self.root / "annotations" / f"instances_{split}.json"
        self.image_dir = self.root / split
        if not ann_file.is_file():
            raise not_found(f"COCO {split}", root, f"no annotations/instances_{split}.json", LAYOUT, URL)
        if not self.image_dir.is_dir():
            raise not_found(f"COCO {split}", root, f"no {split}/ image folder", LAYOUT, URL)
        self.coco = _coco(ann_file)
        if selection is not None:
            items = []
            for r in read_selection(selection):
                if r["annotation_id"] not in self.coco.anns:
                    raise ConfigError(
                        f"selection {selection}: annotation {r['annotation_id']} is not in {ann_file}"
                    )
                ann = self.coco.anns[r["annotation_id"]]
                if ann["image_id"] != r["image_id"]:
                    raise ConfigError(
                        f"selection {selection}: annotation {r['annotation_id']} belongs to image "
                        f"{ann['image_id']}, not {r['image_id']}"
                    )
                items.append((r["image_id"], r["annotation_id"], r["difficulty"]))
        else:
            items = [
                (a["image_id"], a["id"], "")
                for a in sorted(self.coco.anns.values(), key=lambda a: a["id"])
                if not a.get("iscrowd", 0) and a["area"] >= min_area
            ]
        if not items:
            raise not_found(f"COCO {split}", root, "no object to evaluate", LAYOUT, URL)
        self._finish(items, n, seed)

    def _load(self, item) -> Sample:
        image_id, ann_id, difficulty = item
        ann = self.coco.anns[ann_id]
        info = self.coco.imgs[image_id]
        category = self.coco.cats[ann["category_id"]]["name"]
        x, y, w, h = ann["bbox"]
        tags = {"category": category, "difficulty": difficulty} if difficulty else {"category": category}
        return Sample(
            id=f"{image_id}_{ann_id}",
            image=self.image_dir / info["file_name"],
            prompt=category,
            mask=self.coco.annToMask(ann).astype(bool),
            tags=tags,
            prompts=[category, f"a {category}"],
            box=np.array([x, y, x + w, y + h], np.float32),
        )

    def ids(self) -> list[str]:
        return [f"{i}_{a}" for i, a, _ in self.items]


# --- building a difficulty-levelled selection from objective cues -----------------------------------------


def edge_density(
    image: np.ndarray, exclude: np.ndarray | None = None, size: int = 256, threshold: float = 0.1
) -> float:
    """Background clutter: the fraction of pixels (outside ``exclude``) whose Sobel gradient magnitude on
    the grey image, downscaled to at most ``size`` px and scaled to [0, 1], exceeds ``threshold``.

    Args:
        image: an H x W x 3 uint8 image.
        exclude: an H x W bool mask of pixels left out (the object), or None.
        size: the longest side the image is downscaled to.
        threshold: the gradient-magnitude threshold on the [0, 1] scale.
    """
    from PIL import Image
    from scipy import ndimage

    h, w = image.shape[:2]
    scale = min(1.0, size / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    grey = (
        np.asarray(Image.fromarray(image).convert("L").resize((sw, sh), Image.BILINEAR), np.float32) / 255.0
    )
    mag = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)) / 4.0
    edges = mag > threshold
    keep = np.ones_like(edges)
    if exclude is not None:
        keep = ~np.asarray(
            Image.fromarray(exclude.astype(np.uint8) * 255).resize((sw, sh), Image.NEAREST), bool
        )
    return float(edges[keep].mean()) if keep.any() else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share their mean rank)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return np.zeros(len(values))
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, inv = np.unique(values, return_inverse=True)
    mean_rank = np.bincount(inv, ranks) / np.bincount(inv)
    return mean_rank[inv] / (len(values) - 1)


def selection_candidates(
    coco, image_dir: Path | None = None, max_images: int | None = None, seed: int = 0, progress: bool = False
) -> list[dict[str, Any]]:
    """One candidate object per image with its cues: the largest non-crowd instance whose category occurs
    once in the image (so the category prompt names it unambiguously); images without one are skipped.

    Cues: ``n_instances`` (objects in the image), ``area_fraction`` (object area / image area) and, when
    ``image_dir`` is given, ``clutter`` (:func:`edge_density` outside the object).

    Args:
        coco: a ``pycocotools.coco.COCO`` index.
        image_dir: the image folder; None skips the clutter cue.
        max_images: only a random ``max_images`` of the images (None: all).
        seed: the random seed of that draw.
        progress: show a progress bar.
    """
    image_ids = sorted(coco.imgs)
    if max_images is not None:
        image_ids = [image_ids[i] for i in subsample(len(image_ids), max_images, seed)]
    from ..io import load_image

    out = []
    iterator = image_ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(image_ids, desc="cues", unit="img")
    for image_id in iterator:
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        counts: dict[int, int] = {}
        for a in anns:
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
        unique_anns = [a for a in anns if counts[a["category_id"]] == 1]
        if not unique_anns:
            continue
        target = max(unique_anns, key=lambda a: a["area"])
        info = coco.imgs[image_id]
        row = {
            "image_id": image_id,
            "annotation_id": target["id"],
            "category": coco.cats[target["category_id"]]["name"],
            "n_instances": len(anns),
            "area_fraction": float(target["area"]) / float(info["width"] * info["height"]),
        }
        if image_dir is not None:
            img = load_image(Path(image_dir) / info["file_name"])
            row["clutter"] = edge_density(img, coco.annToMask(target).astype(bool))
        out.append(row)
    return out


def make_selection(
    candidates: list[dict[str, Any]], per_level: int = 25, seed: int = 0, min_area_fraction: float = 0.005
) -> list[dict[str, Any]]:
    """Split candidates into 4 difficulty levels by a score and draw ``per_level`` images from each.

    The score is the mean percentile rank of: more instances, a smaller object, more clutter (when
    measured). Candidates are cut into quartiles of that score (easy, medium, hard, very hard) and
    ``per_level`` are drawn at random from each with ``seed``. Objects under ``min_area_fraction`` of the
    image are left out (too small to be judged by eye).

    Args:
        candidates: the rows of :func:`selection_candidates`.
        per_level: images per difficulty level.
        seed: the random seed of the draw.
        min_area_fraction: the smallest object area as a fraction of the image.
    """
    cands = [c for c in candidates if c["area_fraction"] >= min_area_fraction]
    if len(cands) < 4 * per_level:
        raise ConfigError(f"only {len(cands)} candidate objects; need at least {4 * per_level}")
    n_inst = np.array([c["n_instances"] for c in cands], float)
    area = np.array([c["area_fraction"] for c in cands], float)
    parts = [_ranks(n_inst), _ranks(-area)]
    if all("clutter" in c for c in cands):
        parts.append(_ranks(np.array([c["clutter"] for c in cands], float)))
    score = np.mean(parts, axis=0)
    order = np.argsort(score, kind="stable")
    bins = np.array_split(order, 4)
    rng = np.random.default_rng(seed)
    out = []
    for level, idx in zip(LEVELS, bins):
        pick = sorted(rng.choice(idx, size=per_level, replace=False), key=lambda i: score[i])
        for i in pick:
            out.append({**cands[i], "difficulty": level, "score": round(float(score[i]), 6)})
    return out


def write_selection(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write selection rows as CSV (image_id, annotation_id, difficulty first, then the cues).

    Args:
        rows: the selection rows (dicts).
        path: the CSV file to write (its folder is created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = ["image_id", "annotation_id", "difficulty"]
    rest = [k for k in rows[0] if k not in first] if rows else []
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=first + rest)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path
