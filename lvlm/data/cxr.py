"""Chest X-rays with lung masks (Kaggle "Chest Xray Masks and Labels": Montgomery + Shenzhen), prompt
"lungs"."""

from __future__ import annotations

from pathlib import Path

from ..registry import register
from ..types import Sample
from .base import Dataset, find_by_stem, list_images, not_found

URL = "https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels"
LAYOUT = (
    "  ROOT/                         the unzipped archive "
    "(the 'data/' and 'Lung Segmentation/' levels are optional)\n"
    "    Lung Segmentation/\n"
    "      CXR_png/  MCUCXR_0001_0.png ...  (Montgomery, 138)   CHNCXR_0001_0.png ...  (Shenzhen, 662)\n"
    "      masks/    MCUCXR_0001_0.png ...  (same name)          CHNCXR_0001_0_mask.png (suffix _mask)\n"
    "  or the original Montgomery set: ROOT/CXR_png/*.png + ROOT/ManualMask/leftMask/*.png + rightMask/*.png"
)
SPLITS = ("test", "train", "all")


def _find_images_dir(root: Path) -> Path | None:
    for cand in (root, root / "Lung Segmentation", root / "data" / "Lung Segmentation", root / "data"):
        if (cand / "CXR_png").is_dir():
            return cand
    return None


@register(
    "dataset",
    "cxr",
    description="chest X-rays + lung masks (Montgomery / Shenzhen), prompt 'lungs'",
    source=URL,
)
class ChestXrayLungs(Dataset):
    """Chest X-ray lung segmentation, as Villarreal et al.'s CXR set: 100 X-rays sampled with a seed from the
    test split.

    ``split``: ``"test"`` = the X-rays whose mask has the image's own file name (the Montgomery set, 138),
    the test split Kaggle notebooks on this archive use; ``"train"`` = the ``_mask``-suffixed ones
    (Shenzhen, 566); ``"all"`` = both. The archive's separate ``test/`` folder has no masks and is not used.
    Left and right lung masks given as separate files (``ManualMask/leftMask`` + ``rightMask``) are combined.

    Args:
        root: the "Chest X-ray masks and labels" archive folder.
        split: ``test``, ``train`` or ``all`` (see above).
        n: sample this many X-rays with ``seed`` (None: all).
        seed: the random seed of the sample.
        prompt: the text prompt of every sample.
    """

    name = "cxr"

    def __init__(
        self, root: str, split: str = "test", n: int | None = 100, seed: int = 0, prompt: str = "lungs"
    ):
        if split not in SPLITS:
            from ..errors import ConfigError

            raise ConfigError(f"cxr split={split!r}; valid splits: {', '.join(SPLITS)}")
        self.root = Path(root).expanduser()
        self.prompt = prompt
        if not self.root.is_dir():
            raise not_found("Chest X-ray masks and labels", root, "no such folder", LAYOUT, URL)
        base = _find_images_dir(self.root)
        if base is None:
            raise not_found("Chest X-ray masks and labels", root, "no CXR_png/ folder", LAYOUT, URL)
        images = list_images(base / "CXR_png")
        items = []
        left, right = base / "ManualMask" / "leftMask", base / "ManualMask" / "rightMask"
        if left.is_dir() and right.is_dir():  # the original Montgomery release: one mask per lung
            for img in images:
                lm, rm = find_by_stem(left, img.stem), find_by_stem(right, img.stem)
                if lm is not None and rm is not None and split in ("test", "all"):
                    items.append((img, (lm, rm), "montgomery"))
        else:
            masks = base / "masks"
            if not masks.is_dir():
                raise not_found(
                    "Chest X-ray masks and labels",
                    root,
                    f"no masks/ folder beside {base / 'CXR_png'}",
                    LAYOUT,
                    URL,
                )
            for img in images:
                same = find_by_stem(masks, img.stem)
                suffixed = find_by_stem(masks, f"{img.stem}_mask")
                source = (
                    "montgomery"
                    if img.stem.upper().startswith("MCU")
                    else ("shenzhen" if img.stem.upper().startswith("CHN") else "other")
                )
                if same is not None and split in ("test", "all"):
                    items.append((img, (same,), source))
                elif suffixed is not None and split in ("train", "all"):
                    items.append((img, (suffixed,), source))
        if not items:
            raise not_found(
                "Chest X-ray masks and labels", root, f"no image with a mask for split {split!r}", LAYOUT, URL
            )
        self._finish(items, n, seed)

    def _load(self, item) -> Sample:
        from ..io import load_mask

        img, masks, source = item
        mask = load_mask(masks[0])
        for extra in masks[1:]:
            mask = mask | load_mask(extra)
        return Sample(id=img.stem, image=img, prompt=self.prompt, mask=mask, tags={"source": source})

    def ids(self) -> list[str]:
        return [it[0].stem for it in self.items]
