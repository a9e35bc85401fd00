"""End-to-end latency of a packaged pipeline (default: the embedded default) on the CPU, seconds per image by stage.

Builds ``lvlm.Pipeline.from_config(--config)`` (timed separately: model loading), runs it on ``--n`` images with
``--threads`` torch threads (default 2) and reports each stage of ``Result.timings`` (load, prompter,
segmenter, generator, selector, total): the first image apart (cold: lazy initialisation) and the mean / median
over the others, and the fp32 matmul rate measured before and after (on a shared machine, how much CPU the
run got). A text-prompted pipeline gets ``--prompt``; a box-prompted one (the embedded LiteMedSAM
default) the box of the central half of each image.

Images: the real ones under ../shared/data when present (nuclei 512x512 fluorescence, quokka 643x960 photo),
then synthetic scenes of ``--size`` until there are ``--n``.

    python benchmarks/pipeline_latency.py --json
    python benchmarks/pipeline_latency.py --config embedded --n 8 --threads 2 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("LVLM_SHARED", ROOT.parent / "shared")) / "data"


def images(n: int, size: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    from amg_speed import scene

    from lvlm.io import load_image

    out = []
    for name in ("nuclei/img2d.tif", "quokka/quokka.jpg"):
        p = SHARED / name
        if p.is_file() and len(out) < n:
            out.append((name, load_image(p)))
    k = 0
    while len(out) < n:
        out.append((f"scene{k}", scene(*size, seed=k)))
        k += 1
    return out


def gemm_gflops(n: int = 1024, repeats: int = 3) -> float:
    """GFLOP/s of an n x n x n fp32 matmul now: how much of the CPU this run actually gets (shared machines)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="embedded")
    ap.add_argument("--n", type=int, default=6, help="images (the first one is reported apart, cold)")
    ap.add_argument("--size", default="480x640", help="HxW of the synthetic images")
    ap.add_argument("--prompt", default="a red triangle", help="text prompt for text-prompted pipelines")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lvlm import Pipeline

    gemm_before = gemm_gflops()
    t0 = time.perf_counter()
    pipe = Pipeline.from_config(args.config)
    build_s = time.perf_counter() - t0
    size = tuple(int(v) for v in args.size.lower().split("x"))
    rows = []
    for name, img in images(max(2, args.n), size):
        h, w = img.shape[:2]
        kwargs = {}
        if pipe.needs_text:
            kwargs["prompt"] = args.prompt
        else:
            kwargs["box"] = [w / 4, h / 4, 3 * w / 4, 3 * h / 4]
        res = pipe(img, **kwargs)
        rows.append({"image": name, "hw": [h, w], **{k: float(v) for k, v in res.timings.items()}})
    gemm_after = gemm_gflops()
    warm = rows[1:]
    stages = [k for k in rows[0] if k not in ("image", "hw")]
    out = {
        "seconds_per_image": statistics.mean(r["total"] for r in warm),
        "median_seconds_per_image": statistics.median(r["total"] for r in warm),
        "by_stage_mean_s": {k: statistics.mean(r.get(k, 0.0) for r in warm) for k in stages},
        "first_image_s": rows[0]["total"],
        "build_s": build_s,
        "config": args.config,
        "pipeline": repr(pipe),
        "prompt": args.prompt if pipe.needs_text else "box: central half of the image",
        "threads": torch.get_num_threads(),
        "gemm_gflops_before_after": [gemm_before, gemm_after],
        "images": rows,
        "torch": torch.__version__,
    }
    from amg_speed import cpu_model

    out["cpu"] = cpu_model()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.config}: {out['pipeline']} on {out.get('cpu', 'CPU')}, {out['threads']} threads; "
              f"built in {build_s:.2f} s")
        print(f"first image {out['first_image_s']:.3f} s; then {out['seconds_per_image']:.3f} s/image (mean of "
              f"{len(warm)}): " + ", ".join(f"{k} {v:.3f}" for k, v in out["by_stage_mean_s"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
