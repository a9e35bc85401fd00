"""COD10K-v3 camouflaged objects: Image/ + GT_Object/ per split; the prompt is the animal class in the
file name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample
from .base import Dataset, find_by_stem, list_images, not_found, unique

URL = "https://www.kaggle.com/datasets/aarekaz/cod10k (COD10K-v3; project page https://dengpingfan.github.io/pages/COD.html)"
LAYOUT = (
    "  ROOT/                         (or ROOT/COD10K-v3/)\n"
    "    Train/Image/COD10K-CAM-1-Aquatic-1-BatFish-1.jpg ...   "
    "Train/GT_Object/COD10K-CAM-1-Aquatic-1-BatFish-1.png ...\n"
    "    Test/Image/...                                         "
    "Test/GT_Object/...   (binary masks, same stem, .png)"
)
SPLITS = {"train": "Train", "test": "Test"}


def parse_name(stem: str) -> dict[str, str]:
    """Category tags from a COD10K file name: ``COD10K-CAM-1-Aquatic-1-BatFish-1`` ->
    ``{"kind": "CAM", "superclass": "Aquatic", "class": "BatFish"}`` (empty dict for other names).

    Args:
        stem: the file name without extension.
    """
    parts = stem.split("-")
    if len(parts) >= 6 and parts[0].upper().startswith("COD10K"):
        return {"kind": parts[1], "superclass": parts[3], "class": parts[5]}
    return {}


def words(name: str) -> str:
    """``BatFish`` -> ``bat fish``; ``Ghost_Pipefish`` -> ``ghost pipefish``.

    Args:
        name: a CamelCase or underscore-separated name.
    """
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").strip().lower()


@register("dataset", "cod10k", description="COD10K-v3 camouflaged animals (Image + GT_Object)", source=URL)
class COD10K(Dataset):
    """COD10K-v3 camouflaged object detection; Dhungana and Bista evaluate 200 test images sampled with a
    seed.

    The prompt is ``prompt`` formatted with the file name's ``{class}`` in words (``BatFish`` -> "bat fish"),
    falling back to ``default_prompt``. Only camouflaged (``-CAM-``) images with a mask are kept unless
    ``include_noncam`` (then non-camouflaged images without a mask get an empty one).

    Args:
        root: the COD10K-v3 folder (or its parent).
        split: ``train`` or ``test``.
        n: sample this many images with ``seed`` (None: all).
        seed: the random seed of the sample.
        prompt: the prompt template, with ``{class}`` in words.
        default_prompt: the prompt when the file name names no class.
        include_noncam: keep non-camouflaged images too (with empty masks).
    """

    name = "cod10k"

    def __init__(
        self,
        root: str,
        split: str = "test",
        n: int | None = 200,
        seed: int = 0,
        prompt: str = "{class}",
        default_prompt: str = "camouflaged animal",
        include_noncam: bool = False,
    ):
        if split not in SPLITS:
            raise ConfigError(f"cod10k split={split!r}; valid splits: {', '.join(SPLITS)}")
        self.root = Path(root).expanduser()
        self.prompt, self.default_prompt = prompt, default_prompt
        base = self.root / "COD10K-v3" if (self.root / "COD10K-v3").is_dir() else self.root
        img_dir, gt_dir = base / SPLITS[split] / "Image", base / SPLITS[split] / "GT_Object"
        if not img_dir.is_dir() or not gt_dir.is_dir():
            raise not_found(
                "COD10K-v3",
                root,
                f"no {SPLITS[split]}/Image and {SPLITS[split]}/GT_Object folders",
                LAYOUT,
                URL,
            )
        items = []
        for img in list_images(img_dir):
            tags = parse_name(img.stem)
            mask = find_by_stem(gt_dir, img.stem)
            camo = tags.get("kind", "CAM") == "CAM"
            if mask is not None and (camo or include_noncam):
                items.append((img, mask, tags))
            elif mask is None and not camo and include_noncam:
                items.append((img, None, tags))
        if not items:
            raise not_found("COD10K-v3", root, f"no image with a GT_Object mask in {img_dir}", LAYOUT, URL)
        self._finish(items, n, seed)

    def _load(self, item) -> Sample:
        from ..io import load_image, load_mask

        img, mask_path, tags = item
        if mask_path is None:
            h, w = load_image(img).shape[:2]
            mask = np.zeros((h, w), bool)
        else:
            mask = load_mask(mask_path)
        cls = words(tags["class"]) if "class" in tags else ""
        prompt = (
            self.prompt.format(**{"class": cls, "superclass": words(tags.get("superclass", ""))})
            if cls
            else self.default_prompt
        )
        return Sample(
            id=img.stem,
            image=img,
            prompt=prompt,
            mask=mask,
            tags=dict(tags),
            prompts=unique([prompt, self.default_prompt]),
        )

    def ids(self) -> list[str]:
        return [it[0].stem for it in self.items]
