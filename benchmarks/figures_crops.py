"""The crop strategies of the `clip` selector, as the CLIP model sees them (docs/img/crops.png).

A synthetic chest-X-ray-like image (two lungs) and one candidate mask (the left lung, as SAM
returns it in Villarreal et al. Fig. 7) go through ``ClipSelector.crop_images`` for every crop strategy;
each panel is the model input (224 x 224 after OA-RN50's preprocessing), de-normalised. The
CLIP weights play no part (only the preprocessing), so OA-RN50 is built with random weights and
the script runs offline.

    python benchmarks/figures_crops.py                       # writes docs/img/crops.png
    python benchmarks/figures_crops.py --out /tmp/crops.png --margin 0.2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_scene(h: int = 300, w: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image, H x W bool mask of the left lung) of a radiograph-like scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    body = np.exp(-(((xx - w / 2) / (0.42 * w)) ** 6 + ((yy - h * 0.55) / (0.55 * h)) ** 6))
    img = 40 + 150 * body
    lungs = []
    for cx in (0.34 * w, 0.66 * w):
        lung = ((xx - cx) / (0.115 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2 <= 1
        img[lung] -= 85
        lungs.append(lung)
    spine = np.abs(xx - w / 2) < 0.035 * w
    img[spine] += 50
    for k in range(6):  # ribs
        rib = np.abs(yy - (0.28 + 0.09 * k) * h - 0.0012 * (xx - w / 2) ** 2 / (w / 400)) < 3.5
        img[rib & (body > 0.5)] += 28
    img += rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), lungs[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "crops.png"))
    ap.add_argument(
        "--margin", type=float, default=0.1, help="box margin (fraction of the box's longer side)"
    )
    ap.add_argument(
        "--blur-sigma", type=float, default=0.02, help="background blur (fraction of the longer side)"
    )
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from lvlm.io import overlay
    from lvlm.selectors.clip import CROPS, ClipSelector

    image, mask = synthetic_scene()
    clip = {"name": "OA-RN50", "checkpoint": None, "device": "cpu"}  # the real preprocessing, random weights
    sel = ClipSelector(model=clip, margin=args.margin, blur_sigma=args.blur_sigma, device="cpu")
    mean = torch.tensor(sel.clip.mean).view(3, 1, 1)
    std = torch.tensor(sel.clip.std).view(3, 1, 1)

    panels = [("input + candidate mask", overlay(image, mask))]
    for crop in CROPS:
        x = sel.crop_images(image, mask[None], crop)[0].float()
        rgb = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        panels.append((crop, rgb))

    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.6))
    for ax, (title, im) in zip(axes, panels):
        ax.imshow(im)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(
        f"What CLIP sees for one candidate (OA-RN50 preprocessing, {sel.clip.image_size} px; "
        f"margin {args.margin:g}, blur sigma {args.blur_sigma:g})",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
