"""docs/img/quickstart.png: the README's first command on the bundled example, as image | mask | overlay.

python benchmarks/figures_quickstart.py            # runs `lvlm segment ... --prompt "a red star" --overlay`
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from PIL import Image

    from lvlm.cli import main as lvlm

    example = ROOT / "lvlm" / "assets" / "examples" / "shapes.png"
    with tempfile.TemporaryDirectory() as out:
        if (
            lvlm(["segment", str(example), "--prompt", "a red star", "--overlay", "--out", out, "--quiet"])
            != 0
        ):
            return 1
        mask = np.asarray(Image.open(Path(out) / "shapes_a_red_star.png").convert("RGB"))
        overlay = np.asarray(Image.open(Path(out) / "shapes_a_red_star_overlay.png").convert("RGB"))
    image = np.asarray(Image.open(example).convert("RGB"))
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    panel = np.concatenate([image, gap, mask, gap, overlay], axis=1)
    dest = ROOT / "docs" / "img" / "quickstart.png"
    Image.fromarray(panel).save(dest)
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
