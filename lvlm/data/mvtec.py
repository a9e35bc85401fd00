"""MVTec AD: test/<defect>/*.png with ground_truth/<defect>/*_mask.png; defect-free images have empty
masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample
from .base import Dataset, find_by_stem, list_images, not_found, unique

URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad (CC BY-NC-SA 4.0)"
LAYOUT = (
    "  ROOT/carpet/                  "
    "(ROOT is the unpacked mvtec_anomaly_detection/ folder, or the category folder itself)\n"
    "    train/good/000.png ...\n"
    "    test/good/000.png ...  test/cut/000.png ...  test/hole/ ...  test/metal_contamination/ ...\n"
    "    ground_truth/cut/000_mask.png ...  ground_truth/hole/ ...   "
    "(no ground_truth/good: those masks are empty)"
)


@register(
    "dataset", "mvtec", description="MVTec AD defects of one category (per-defect-type tags)", source=URL
)
class MVTecAD(Dataset):
    """MVTec AD anomaly segmentation of one ``category`` (Dhungana and Bista: carpet, 89 defective test
    images).

    One sample per test image, tagged ``{"defect": <type>, "category": ...}``; ``include_good`` adds the
    defect-free test images with empty masks. ``prompt`` may use ``{defect}`` and ``{category}``
    (e.g. ``"{defect} defect"``; defect names in words: ``metal_contamination`` -> "metal contamination").

    Args:
        root: the MVTec AD folder (or one category's folder).
        category: the object / texture category, e.g. ``carpet``.
        split: ``test`` (the only split with defects).
        n: sub-sample this many images with ``seed`` (None: all).
        seed: the random seed of the sub-sample.
        include_good: add the defect-free test images.
        defects: keep only these defect types (None: all).
        prompt: the prompt template (``{defect}``, ``{category}``).
    """

    name = "mvtec"

    def __init__(
        self,
        root: str,
        category: str = "carpet",
        split: str = "test",
        n: int | None = None,
        seed: int = 0,
        include_good: bool = False,
        defects: list[str] | None = None,
        prompt: str = "defect",
    ):
        if split != "test":
            raise ConfigError("mvtec split must be 'test' (the train split holds defect-free images only)")
        self.root = Path(root).expanduser()
        base = self.root / category if (self.root / category / "test").is_dir() else self.root
        test, gt = base / "test", base / "ground_truth"
        if not test.is_dir():
            raise not_found(f"MVTec AD ({category})", root, f"no {category}/test folder", LAYOUT, URL)
        self.category, self.prompt = category, prompt
        kinds = sorted(d.name for d in test.iterdir() if d.is_dir())
        if defects is not None:
            unknown = sorted(set(defects) - set(kinds))
            if unknown:
                raise ConfigError(f"mvtec defects {unknown} not in {test}; found: {', '.join(kinds)}")
            kinds = [k for k in kinds if k in defects]
        items = []
        for kind in kinds:
            if kind == "good" and not include_good:
                continue
            for img in list_images(test / kind):
                mask = None if kind == "good" else find_by_stem(gt / kind, f"{img.stem}_mask")
                if kind != "good" and mask is None:
                    raise not_found(
                        f"MVTec AD ({category})",
                        root,
                        f"no mask {gt / kind / (img.stem + '_mask.png')}",
                        LAYOUT,
                        URL,
                    )
                items.append((img, mask, kind))
        if not items:
            raise not_found(f"MVTec AD ({category})", root, "no test image", LAYOUT, URL)
        self._finish(items, n, seed)

    def _load(self, item) -> Sample:
        from ..io import load_image, load_mask

        img, mask_path, kind = item
        if mask_path is None:
            mask = np.zeros(load_image(img).shape[:2], bool)
        else:
            mask = load_mask(mask_path)
        defect = kind.replace("_", " ")
        prompt = self.prompt.format(defect=defect, category=self.category)
        return Sample(
            id=f"{kind}_{img.stem}",
            image=img,
            prompt=prompt,
            mask=mask,
            tags={"defect": kind, "category": self.category},
            prompts=unique([prompt, f"{defect} defect", "defect", "anomaly"]),
        )

    def ids(self) -> list[str]:
        return [f"{it[2]}_{it[0].stem}" for it in self.items]
