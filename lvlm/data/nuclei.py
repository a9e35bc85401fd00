"""Fluorescence nuclei (an instance label image): one sample per nucleus with its box, or the whole image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample, masks_to_boxes
from .base import Dataset, not_found

URL = (
    "the stardist package's sample data (stardist/data/images/img2d.tif, mask2d.tif; a crop of the 2018 Data "
    "Science Bowl set BBBC038: https://bbbc.broadinstitute.org/BBBC038)"
)
LAYOUT = """\
  ROOT/img2d.tif    the image (any bit depth; grey or RGB)
  ROOT/mask2d.tif   the instance label image of the same size (0 = background, k = nucleus k)
  (or give image= and mask= paths)"""
MODES = ("instances", "semantic")


@register(
    "dataset",
    "nuclei",
    description="nuclei: per-instance samples with box prompts, or the whole image",
    source=URL,
)
class Nuclei(Dataset):
    """Nuclei of an instance label image (the shared real sample: 512 x 512, 125 nuclei).

    ``mode="instances"``: one sample per nucleus of at least ``min_area`` pixels, prompt ``"nucleus"``,
    ``box`` = its xyxy box, tags ``{"instance": k, "half": "left" | "right"}`` (by the box centre, for a
    held-out split); ``mode="semantic"``: one sample, all nuclei, prompt ``"nuclei"``.

    Args:
        root: a folder with ``img2d.tif`` and ``mask2d.tif``, or None with ``image`` and ``mask``.
        image: the image file (overrides ``root``'s).
        mask: the instance label image file (overrides ``root``'s).
        mode: ``instances`` or ``semantic``.
        n: sub-sample this many nuclei with ``seed`` (None: all).
        seed: the random seed of the sub-sample.
        min_area: the smallest nucleus area in pixels.
        prompt: the text prompt (default: ``nucleus`` / ``nuclei`` by mode).
    """

    name = "nuclei"

    def __init__(
        self,
        root: str | None = None,
        image: str | None = None,
        mask: str | None = None,
        mode: str = "instances",
        n: int | None = None,
        seed: int = 0,
        min_area: int = 1,
        prompt: str | None = None,
    ):
        if mode not in MODES:
            raise ConfigError(f"nuclei mode={mode!r}; valid modes: {', '.join(MODES)}")
        if root is None and (image is None or mask is None):
            raise ConfigError(
                "nuclei needs root= (a folder with img2d.tif and mask2d.tif) or image= and mask="
            )
        self.image_path = Path(image).expanduser() if image else Path(root).expanduser() / "img2d.tif"
        self.mask_path = Path(mask).expanduser() if mask else Path(root).expanduser() / "mask2d.tif"
        for p in (self.image_path, self.mask_path):
            if not p.is_file():
                raise not_found("nuclei", root, f"no file {p.name!r} ({p})", LAYOUT, URL)
        from ..io import load_image, load_mask

        self.image = load_image(self.image_path)
        self.labels = np.asarray(load_mask(self.mask_path, instance=True))
        if self.labels.shape != self.image.shape[:2]:
            raise ConfigError(
                f"nuclei: mask {self.labels.shape} and image {self.image.shape[:2]} differ in size"
            )
        self.mode = mode
        self.prompt = prompt or ("nucleus" if mode == "instances" else "nuclei")
        self.stem = self.image_path.stem
        if mode == "semantic":
            items = [0]
        else:
            ids, counts = np.unique(self.labels[self.labels > 0], return_counts=True)
            items = [int(k) for k, c in zip(ids, counts) if c >= min_area]
        self._finish(items, n, seed)

    def _load(self, k: int) -> Sample:
        if self.mode == "semantic":
            return Sample(
                id=self.stem,
                image=self.image,
                prompt=self.prompt,
                mask=self.labels > 0,
                tags={},
                prompts=[self.prompt, "cell nuclei"],
            )
        mask = self.labels == k
        box = masks_to_boxes(mask[None])[0]
        half = "left" if (box[0] + box[2]) / 2 < self.labels.shape[1] / 2 else "right"
        return Sample(
            id=f"{self.stem}_{k}",
            image=self.image,
            prompt=self.prompt,
            mask=mask,
            tags={"instance": k, "half": half},
            prompts=[self.prompt, "cell nucleus"],
            box=box,
        )

    def ids(self) -> list[str]:
        return [self.stem] if self.mode == "semantic" else [f"{self.stem}_{k}" for k in self.items]
