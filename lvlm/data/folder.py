"""Any images/ + masks/ folder pair, with one fixed prompt or the prompts of a CSV file."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import ConfigError
from ..registry import register
from ..types import Sample
from .base import Dataset, find_by_stem, list_images, not_found

LAYOUT = """\
  ROOT/images/<name>.<png|jpg|tif|...>
  ROOT/masks/<name><mask_suffix>.<png|...>     (non-zero = object)
  optional CSV (prompts=...): columns image,prompt[,mask][,<tag columns>]; one sample per row"""
URL = "your own data (any images with binary masks)"


@register("dataset", "folder", description="images/ + masks/ folders with a fixed prompt or a CSV of prompts")
class ImageMaskFolder(Dataset):
    """Your own data: ``ROOT/images`` and ``ROOT/masks`` matched by file stem (+ ``mask_suffix``).

    Images without a mask are left out.

    Args:
        root: the folder holding ``images/`` and ``masks/``.
        prompt: one text for every image (or give ``prompts``).
        prompts: a CSV with columns ``image`` (file name or stem), ``prompt``, optionally ``mask`` (file name
            in masks/) and extra columns kept as tags (one sample per row).
        images: name of the image folder.
        masks: name of the mask folder.
        mask_suffix: what a mask's stem adds to its image's stem (``"_mask"``), or a list tried in order.
        tags: tags given to every sample (e.g. ``{"class": "crack"}``).
        lazy_masks: keep each sample's mask as its path (read when used) instead of loading it.
        n: keep a seeded random subset of ``n`` samples.
        seed: the subset's seed.
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        prompt: str | None = None,
        prompts: str | None = None,
        images: str = "images",
        masks: str = "masks",
        mask_suffix: str | list[str] = "",
        tags: dict | None = None,
        lazy_masks: bool = False,
        n: int | None = None,
        seed: int = 0,
    ):
        suffixes = [mask_suffix] if isinstance(mask_suffix, str) else [str(x) for x in mask_suffix]
        self.tags = dict(tags or {})
        self.lazy_masks = bool(lazy_masks)

        def find_mask(stem: str):
            return next(
                (m for m in (find_by_stem(mask_dir, stem + sfx) for sfx in suffixes) if m is not None), None
            )

        if (prompt is None) == (prompts is None):
            raise ConfigError(
                "folder dataset: give exactly one of prompt= (fixed text) or prompts= (a CSV file)"
            )
        self.root = Path(root).expanduser()
        img_dir, mask_dir = self.root / images, self.root / masks
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise not_found("folder dataset", root, f"no {images}/ and {masks}/ folders", LAYOUT, URL)
        items = []
        if prompts is None:
            for img in list_images(img_dir):
                m = find_mask(img.stem)
                if m is not None:
                    items.append((img, m, prompt, {}))
        else:
            csv_path = Path(prompts).expanduser()
            if not csv_path.is_absolute() and not csv_path.is_file():
                csv_path = self.root / csv_path
            if not csv_path.is_file():
                raise not_found("folder dataset", root, f"no prompts CSV {prompts!r}", LAYOUT, URL)
            with csv_path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            for i, r in enumerate(rows):
                if not r.get("image") or not r.get("prompt"):
                    raise ConfigError(f"{csv_path}: row {i + 2} needs 'image' and 'prompt' columns")
                name = r["image"]
                img = img_dir / name if (img_dir / name).is_file() else find_by_stem(img_dir, Path(name).stem)
                if img is None:
                    raise not_found(
                        "folder dataset", root, f"no image {name!r} (CSV row {i + 2})", LAYOUT, URL
                    )
                m = mask_dir / r["mask"] if r.get("mask") else find_mask(img.stem)
                if m is None or not m.is_file():
                    raise not_found(
                        "folder dataset", root, f"no mask for {name!r} (CSV row {i + 2})", LAYOUT, URL
                    )
                tags = {k: v for k, v in r.items() if k not in ("image", "prompt", "mask") and k}
                items.append((img, m, r["prompt"], tags))
        if not items:
            raise not_found("folder dataset", root, "no image with a matching mask", LAYOUT, URL)
        self._ids = _unique_ids(items)
        self._finish(list(zip(self._ids, items)), n, seed)

    def _load(self, item) -> Sample:
        from ..io import load_mask

        ident, (img, mask, prompt, tags) = item
        return Sample(
            id=ident,
            image=img,
            prompt=prompt,
            mask=str(mask) if self.lazy_masks else load_mask(mask),
            tags={**self.tags, **tags},
        )

    def ids(self) -> list[str]:
        return [it[0] for it in self.items]


def _unique_ids(items) -> list[str]:
    """Image stems, with the prompt appended where one image has several rows."""
    from collections import Counter

    from ..io import slug

    stems = [it[0].stem for it in items]
    count = Counter(stems)
    return [stem if count[stem] == 1 else f"{stem}_{slug(it[2])}" for stem, it in zip(stems, items)]
