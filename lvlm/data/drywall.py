"""Drywall QA (the CLIPSeg drywall report): Roboflow COCO-JSON exports of cracks and taping areas; boxes
filled as masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample
from .base import Dataset, not_found, stable_seed

URL = (
    "Roboflow Universe: https://universe.roboflow.com/objectdetect-pu6rn/drywall-join-detect (taping) and "
    "https://universe.roboflow.com/university-bswxt/crack-bphdr (cracks); export format 'COCO'"
)
LAYOUT = """\
  ROOT/                         one Roboflow export in COCO format (give several roots as a list)
    train/_annotations.coco.json  train/*.jpg
    valid/_annotations.coco.json  valid/*.jpg
    test/_annotations.coco.json   test/*.jpg     (not every export has every split)"""

#: the CLIPSeg drywall report's prompt lists, the first one of each being the canonical prompt
PROMPTS = {
    "taping": ["segment taping area", "segment joint tape", "segment drywall seam", "segment wall joint"],
    "crack": ["segment crack", "segment wall crack", "segment surface crack", "segment fracture"],
}
TAPING_WORDS = ("tap", "join", "seam", "drywall")


def class_of(category: str) -> str | None:
    """Map a Roboflow category name to ``crack`` / ``taping`` (None when neither).

    Args:
        category: the export's category name.
    """
    c = category.lower()
    if "crack" in c:
        return "crack"
    if any(w in c for w in TAPING_WORDS):
        return "taping"
    return None


def fill_boxes(boxes_xywh, height: int, width: int) -> np.ndarray:
    """H x W bool mask with every COCO ``[x, y, w, h]`` box filled (outward-rounded to whole pixels).

    Args:
        boxes_xywh: COCO ``[x, y, w, h]`` boxes.
        height: mask height in pixels.
        width: mask width in pixels.
    """
    mask = np.zeros((height, width), bool)
    for x, y, w, h in boxes_xywh:
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
        mask[y0:y1, x0:x1] = True
    return mask


@register(
    "dataset",
    "drywall",
    description="drywall cracks / taping areas (Roboflow COCO export, boxes -> masks)",
    source=URL,
)
class Drywall(Dataset):
    """One sample per (image, class) of a Roboflow COCO export: the union of that class's boxes, filled.

    Classes come from category names (``crack`` / ``taping``; override with ``class_map``); the prompt is the
    first of the CLIPSeg drywall report's list for the class, or a seeded random one with
    ``prompt_mode="random"``; every phrasing is in ``sample.prompts``. ``use_polygons`` fills segmentation
    polygons where an export has them.

    Args:
        root: an export folder, or several (one dataset of all of them).
        split: the export's split folder (``train``, ``valid``, ``test``).
        n: sub-sample this many samples with ``seed`` (None: all).
        seed: the random seed of the sub-sample and of random prompts.
        classes: keep only these classes (None: all).
        class_map: ``{category name: class}`` overriding the name-based mapping.
        prompts: ``{class: [phrasings]}`` added to (or replacing) the default lists.
        prompt_mode: ``first`` or ``random``.
        use_polygons: fill segmentation polygons instead of boxes where the export has them.
    """

    name = "drywall"

    def __init__(
        self,
        root: str | list[str],
        split: str = "valid",
        n: int | None = None,
        seed: int = 0,
        classes: list[str] | None = None,
        class_map: dict[str, str] | None = None,
        prompts: dict[str, list[str]] | None = None,
        prompt_mode: str = "first",
        use_polygons: bool = False,
    ):
        if prompt_mode not in ("first", "random"):
            raise ConfigError(f"drywall prompt_mode={prompt_mode!r}; valid: first, random")
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        self.prompts = {**PROMPTS, **(prompts or {})}
        self.prompt_mode, self.seed, self.use_polygons = prompt_mode, seed, use_polygons
        items = []
        for r in roots:
            r = Path(r).expanduser()
            ann = r / split / "_annotations.coco.json"
            if not ann.is_file():
                raise not_found(
                    "Drywall (Roboflow COCO export)", r, f"no {split}/_annotations.coco.json", LAYOUT, URL
                )
            data = json.loads(ann.read_text())
            cats = {}
            for c in data.get("categories", []):
                name = (class_map or {}).get(c["name"], class_of(c["name"]))
                if name is not None:
                    cats[c["id"]] = name
            per_image: dict[tuple[int, str], list[dict]] = {}
            for a in data.get("annotations", []):
                cls = cats.get(a["category_id"])
                if cls is not None and (classes is None or cls in classes):
                    per_image.setdefault((a["image_id"], cls), []).append(a)
            images = {im["id"]: im for im in data.get("images", [])}
            prefix = f"{r.name}/" if len(roots) > 1 else ""
            for (image_id, cls), anns in sorted(per_image.items(), key=lambda kv: (kv[0][0], kv[0][1])):
                im = images.get(image_id)
                if im is None:
                    continue
                items.append(
                    (r / split / im["file_name"], int(im["height"]), int(im["width"]), cls, anns, prefix)
                )
        if not items:
            raise not_found(
                "Drywall (Roboflow COCO export)",
                roots[0],
                f"no crack / taping annotation in split {split!r}",
                LAYOUT,
                URL,
            )
        unknown = sorted({it[3] for it in items} - set(self.prompts))
        if unknown:
            raise ConfigError(f"drywall classes {unknown} have no prompt list; give prompts={{class: [..]}}")
        self._finish(items, n, seed)

    def _mask(self, anns, h: int, w: int) -> np.ndarray:
        polys = [
            a
            for a in anns
            if self.use_polygons and isinstance(a.get("segmentation"), list) and a["segmentation"]
        ]
        mask = fill_boxes([a["bbox"] for a in anns if a not in polys], h, w)
        if polys:
            from ..optional import require

            mask_utils = require("pycocotools.mask", "polygon masks")
            for a in polys:
                rles = mask_utils.frPyObjects(a["segmentation"], h, w)
                mask |= mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        return mask

    def _load(self, item) -> Sample:
        path, h, w, cls, anns, prefix = item
        ident = f"{prefix}{Path(path).stem}_{cls}"
        options = self.prompts[cls]
        if self.prompt_mode == "random":
            prompt = options[np.random.default_rng(stable_seed(self.seed, ident)).integers(len(options))]
        else:
            prompt = options[0]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)], np.float32)
        return Sample(
            id=ident,
            image=path,
            prompt=prompt,
            mask=self._mask(anns, h, w),
            tags={"class": cls},
            prompts=list(options),
            box=boxes,
        )

    def ids(self) -> list[str]:
        return [f"{it[5]}{Path(it[0]).stem}_{it[3]}" for it in self.items]
