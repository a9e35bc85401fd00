"""Everything mode: ``sam_fast`` vs segment_anything's SamAutomaticMaskGenerator,
same model, image and settings.

Both generators get the same randomly initialised SAM (``--model``: vit_tiny, vit_b, vit_l, vit_h or
mobilesam; no weights can be downloaded here), with :func:`lvlm.testing.point_local_sam` decoder weights by
default so that the official generator keeps a realistic number of distinct masks (``--plain-random`` keeps
the plain random decoder: then almost every mask is removed by NMS). Every figure is a ratio of two
measurements taken in this one run on the same inputs:

- ``speedup``: official seconds / ours seconds per image (median of ``--repeats`` after one warm-up each);
- ``speedup_after_encoder``: the same without each generator's image-encoder time, and
  ``speedup_postprocessing`` without its encoder and mask-decoder time either (both timed by hooks on the
  shared modules): what is left is upsampling, scoring, filtering, NMS, encoding and output;
- ``matched_iou``: mean over our masks of the best IoU with an official mask (``matched_iou_reverse`` the
  other way round); ``count_ratio``: our mask count / the official count.

    python benchmarks/amg_speed.py --model vit_tiny --json                       # seconds, CPU
    python benchmarks/amg_speed.py --model vit_b --points-per-side 8 --json      # CPU, a few minutes
    python benchmarks/amg_speed.py --model vit_h --device cuda --thresholds zero --size 1500x2250 --json # GPU
    python benchmarks/amg_speed.py --model sam2_tiny_random --thresholds zero --box-nms-thresh 1.0 --json
    python benchmarks/amg_speed.py --model vit_b --points-per-side 8 --thresholds zero \\
        --backend onnxruntime --json

SAM 2 (``--model sam2_<variant>``) compares ``sam2_fast`` with ``SAM2AutomaticMaskGenerator``; its random
decoder gets no point-local weights (SAM 2's tiny model is too narrow for them), so ``--box-nms-thresh 1.0``
keeps every mask for the comparison.

``--thresholds zero`` sets pred_iou_thresh = stability_score_thresh = 0 (the setting of the reference figure:
the official generator then run-length encodes every mask of every batch); ``default`` keeps SAM's defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scene(h: int, w: int, n: int = 24, seed: int = 0) -> np.ndarray:
    """Coloured discs and rectangles on a smooth background (H x W x 3 uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([96 + 40 * np.sin(xx / w * 3 + c) * np.cos(yy / h * 2 - c) for c in range(3)], -1)
    for k in range(n):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(min(h, w) // 30 + 2, min(h, w) // 8 + 3)
        inside = (
            ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if k % 2 else ((abs(yy - cy) < r) & (abs(xx - cx) < r))
        )
        img[inside] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def load_input(spec: str, size: tuple[int, int] | None) -> np.ndarray:
    from lvlm.io import load_image

    if spec == "scene":
        return scene(*(size or (480, 640)))
    path = ROOT.parent / "shared" / "data" / "quokka" / "quokka.jpg" if spec == "quokka" else Path(spec)
    img = load_image(path)
    if size is not None:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))
    return img


def best_match_iou(a: torch.Tensor, b: torch.Tensor, chunk: int = 64) -> float:
    """Mean over the masks of ``a`` of their best IoU with a mask of ``b`` (N x H x W bool tensors)."""
    if len(a) == 0 or len(b) == 0:
        return float(len(a) == len(b))
    fb = b.flatten(1).float()
    area_b = fb.sum(1)
    best = []
    for s in range(0, len(a), chunk):
        fa = a[s : s + chunk].flatten(1).float()
        inter = fa @ fb.T  # exact: counts < 2**24
        union = fa.sum(1)[:, None] + area_b[None] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        best.append(iou.max(1).values)
    return float(torch.cat(best).double().mean())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


SAM_MODELS = ["vit_tiny", "vit_b", "vit_l", "vit_h", "mobilesam"]
SAM2_VARIANTS = ["tiny_random", "tiny", "small", "base_plus", "large"]


def build_pair(args, device: str, knobs: dict):
    """(model, official generator, our generator, encoder module, decoder module) for ``--model``."""
    if args.model.startswith("sam2_"):
        if args.backend != "torch":
            raise SystemExit("--backend onnxruntime is for sam_fast (SAM models), not sam2_fast")
        import warnings

        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from lvlm.generators.sam2_fast import Sam2FastGenerator
        from lvlm.models.sam2 import build_sam2_model, fit_feature_sizes

        model = build_sam2_model(args.model[len("sam2_") :], None, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            official = SAM2AutomaticMaskGenerator(
                model, points_per_batch=args.official_points_per_batch, **knobs
            )
        fit_feature_sizes(official.predictor)
        ours = Sam2FastGenerator(
            model=model, device=device, points_per_batch=args.points_per_batch, bf16=args.bf16, **knobs
        )
        return model, official, ours, model.image_encoder, model.sam_mask_decoder
    from segment_anything import SamAutomaticMaskGenerator

    from lvlm.generators.sam_fast import SamFastGenerator
    from lvlm.models.sam import build_sam
    from lvlm.testing import point_local_sam

    model = build_sam(args.model, None, device=device)
    if not args.plain_random:
        point_local_sam(model, seed=args.seed)
    official = SamAutomaticMaskGenerator(model, points_per_batch=args.official_points_per_batch, **knobs)
    ours = SamFastGenerator(
        model=model,
        device=device,
        points_per_batch=args.points_per_batch,
        bf16=args.bf16,
        backend=args.backend,
        **knobs,
    )
    return model, official, ours, model.image_encoder, model.mask_decoder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default="vit_tiny",
        choices=SAM_MODELS + [f"sam2_{v}" for v in SAM2_VARIANTS],
        help="a SAM model_type, or sam2_<variant> for SAM 2.1 (sam2_fast vs SAM2AutomaticMaskGenerator)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image", default="scene", help="'scene' (synthetic), 'quokka' (../shared) or a path")
    ap.add_argument("--size", default=None, help="HxW of the image (default 480x640 for the scene)")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--thresholds", choices=["default", "zero"], default="default")
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--min-mask-region-area", type=int, default=0)
    ap.add_argument(
        "--box-nms-thresh", type=float, default=0.7, help="1.0 turns box NMS off (keeps every mask)"
    )
    ap.add_argument(
        "--points-per-batch",
        type=int,
        default=None,
        help="ours (default: 256 on GPU, 64 on CPU; the official one keeps 64)",
    )
    ap.add_argument("--official-points-per-batch", type=int, default=64)
    ap.add_argument("--bf16", action="store_true", help="our encoder under bf16 autocast")
    ap.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="sam_fast's backend (onnxruntime: CPU, encoder and decoder in ONNX Runtime)",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed runs of each generator on a small crop first"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as set)")
    ap.add_argument("--plain-random", action="store_true", help="keep the plain random decoder weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    from lvlm.components import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    image = load_input(args.image, size)
    knobs = {
        "points_per_side": args.points_per_side,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": args.min_mask_region_area,
        "box_nms_thresh": args.box_nms_thresh,
    }
    if args.thresholds == "zero":
        knobs.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    _, official, ours, encoder, decoder = build_pair(args, device, knobs)

    # time the image encoder and the mask decoder of both generators the same way: hooks on the shared modules
    clock = {"encoder": 0.0, "decoder": 0.0}

    def hooks(module, key):
        start = {}

        def pre(*_):
            sync(device)
            start["t"] = time.perf_counter()

        def post(*_):
            sync(device)
            clock[key] += time.perf_counter() - start["t"]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    hooks(encoder, "encoder")
    hooks(decoder, "decoder")
    for key in (
        "encoder",
        "decoder",
    ):  # backend onnxruntime: ours runs its own modules; time them the same way
        if getattr(ours, f"_ort_{key}", None) is not None:
            hooks(getattr(ours, f"_ort_{key}"), key)
    warm = image[: max(32, image.shape[0] // 4), : max(32, image.shape[1] // 4)]
    for _ in range(args.warmup):
        official.generate(warm)
        ours.generate(warm)
        ours.clear_cache()

    def timed(fn):
        clock.update(encoder=0.0, decoder=0.0)
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        return result, time.perf_counter() - t0, clock["encoder"], clock["decoder"]

    runs_off, runs_ours = [], []
    for _ in range(max(1, args.repeats)):
        records, *t = timed(lambda: official.generate(image))
        runs_off.append(t)
        ours.clear_cache()
        cands, *t = timed(lambda: ours.generate(image))
        runs_ours.append(t)
    off_s, off_enc, off_dec = (statistics.median(r[k] for r in runs_off) for k in range(3))
    ours_s, ours_enc, ours_dec = (statistics.median(r[k] for r in runs_ours) for k in range(3))

    ref = (
        torch.as_tensor(np.stack([r["segmentation"] for r in records]))
        if records
        else torch.zeros(0, *image.shape[:2], dtype=torch.bool)
    )
    mine = torch.as_tensor(cands.masks)
    dev_iou = device if torch.device(device).type == "cuda" else "cpu"
    matched = best_match_iou(mine.to(dev_iou), ref.to(dev_iou))
    matched_rev = best_match_iou(ref.to(dev_iou), mine.to(dev_iou))
    out = {
        "speedup": off_s / ours_s,
        "speedup_after_encoder": (off_s - off_enc) / max(ours_s - ours_enc, 1e-9),
        "speedup_postprocessing": (off_s - off_enc - off_dec) / max(ours_s - ours_enc - ours_dec, 1e-9),
        "matched_iou": matched,
        "matched_iou_reverse": matched_rev,
        "count_ratio": len(cands) / max(len(records), 1),
        "count_official": len(records),
        "count_ours": len(cands),
        "official_s": off_s,
        "ours_s": ours_s,
        "official_encoder_s": off_enc,
        "ours_encoder_s": ours_enc,
        "official_decoder_s": off_dec,
        "ours_decoder_s": ours_dec,
        "ours_stages_s": {k: v for k, v in ours.last_timings.items() if k != "images"},
        "model": args.model,
        "decoder_weights": (
            "random" if args.plain_random or args.model.startswith("sam2_") else "random + point_local_sam"
        ),
        "image": args.image,
        "image_hw": list(image.shape[:2]),
        "settings": {
            **knobs,
            "thresholds": args.thresholds,
            "points_per_batch_ours": ours.points_per_batch,
            "points_per_batch_official": args.official_points_per_batch,
            "bf16": args.bf16,
            "backend": args.backend,
            "onnxruntime_encoder": getattr(ours, "_ort_encoder", None) is not None,
            "repeats": args.repeats,
            "warmup": args.warmup,
        },
        "device": device_name(device),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{args.model} on {out['device']}, image {image.shape[1]}x{image.shape[0]}, "
            f"{args.points_per_side}x{args.points_per_side} points, thresholds {args.thresholds}"
        )
        print(
            f"official {off_s:.2f} s ({len(records)} masks)   {ours.name} {ours_s:.2f} s ({len(cands)} masks)"
        )
        print(
            f"speedup {out['speedup']:.2f}x (after the encoder {out['speedup_after_encoder']:.2f}x, "
            f"post-processing alone {out['speedup_postprocessing']:.2f}x), "
            f"matched IoU {matched:.4f} / {matched_rev:.4f}, count ratio {out['count_ratio']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
