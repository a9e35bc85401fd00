"""What the benchmark runner costs on top of the models: a C x S matrix vs its bare component passes.

    python benchmarks/matrix_cost.py                 # 3 tiny CLIPs x 2 tiny SAM configs x 4 images
    python benchmarks/matrix_cost.py --json          # machine-readable, key ``overhead_ratio``

Two fresh subprocesses on the same images and component configs, each timed from after its imports
(every component module is imported before the clock starts; building the models is timed in both):

- ``matrix``: ``lvlm.bench.run_benchmark`` over the whole C x S matrix (building the components,
  caching every generator pass on disk as RLE, metrics, committing every row to results.jsonl);
- ``baseline``: the same components built by hand, then per image S generator passes and, on each
  generator's candidates, C CLIP selector passes (C x S ``select`` calls: the least work any runner
  must do, since each CLIP scores each generator's masks once).

``overhead_ratio`` = matrix wall time / baseline wall time (target <= 1.2); ``cpu_overhead_ratio`` the
same in process CPU time, steadier on a shared machine. ``--repeats R`` alternates the two R times and
keeps the fastest of each. Without the runner's
generator cache the matrix would cost C x S generator passes instead of S.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` synthetic scenes (a few coloured shapes on a textured background) + the mask of the first."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        bg = (rng.random((size, size, 3)) * 60 + 40).astype(np.uint8)
        img = Image.fromarray(bg)
        mask = Image.new("L", (size, size), 0)
        d, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        for k in range(3):
            x0, y0 = rng.integers(0, size // 2, 2)
            w, h = rng.integers(size // 6, size // 2, 2)
            col = tuple(int(c) for c in rng.integers(80, 255, 3))
            (d.ellipse if k % 2 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=col)
            if k == 0:
                dm.rectangle([x0, y0, x0 + w, y0 + h], fill=255)
        img.save(root / "images" / f"scene{i}.png")
        mask.save(root / "masks" / f"scene{i}.png")
    return root


def specs(clips: int, sams: int, points: int) -> tuple[dict, dict]:
    clip_opts = [
        ("tiny-rn", {"name": "clip", "model": "tiny-rn"}),
        ("tiny-vit", {"name": "clip", "model": "tiny-vit"}),
        ("tiny-rn crop", {"name": "clip", "model": "tiny-rn", "crop": "mask_crop"}),
        ("tiny-vit crop", {"name": "clip", "model": "tiny-vit", "crop": "mask_crop"}),
    ]
    gen = {
        "name": "sam",
        "model_type": "vit_tiny",
        "checkpoint": None,
        "device": "cpu",
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    gens = {f"SAM-tiny pps{points + 2 * j}": {**gen, "points_per_side": points + 2 * j} for j in range(sams)}
    sels = {}
    for i in range(clips):
        label, spec = clip_opts[i % len(clip_opts)]
        sels[label if i < len(clip_opts) else f"{label} #{i}"] = {
            **spec,
            "device": "cpu",
            **({"margin": 0.1 + 0.01 * i} if i >= 4 else {}),
        }
    return sels, gens


def _preload() -> None:
    """Import every component module before timing (the same one-off cost for both parts)."""
    from lvlm.registry import available

    available("generator")


def part_matrix(args) -> dict:
    t0 = time.perf_counter()
    from lvlm.bench.runner import run_benchmark

    _preload()
    sels, gens = specs(args.clips, args.sams, args.points)
    cfg = {
        "datasets": {"scenes": {"name": "folder", "root": args.data, "prompt": "a rectangle"}},
        "matrix": {"selector": sels, "generator": gens},
        "save_masks": True,
    }
    t1, c1 = time.perf_counter(), time.process_time()
    out = run_benchmark(cfg, Path(args.work) / f"run{os.getpid()}", progress=False)
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "seconds": t2 - t1,
        "cpu_s": c2 - c1,
        "setup_s": t1 - t0,
        "rows": out["written"],
        "generator_passes": out["generator_passes"],
    }


def part_baseline(args) -> dict:
    from lvlm.io import load_image
    from lvlm.registry import build_spec

    _preload()
    sels, gens = specs(args.clips, args.sams, args.points)
    paths = sorted((Path(args.data) / "images").glob("*.png"))
    t1, c1 = time.perf_counter(), time.process_time()
    g_objs = [build_spec("generator", s) for s in gens.values()]
    s_objs = [build_spec("selector", s) for s in sels.values()]
    t_gen = t_sel = 0.0
    n_sel = 0
    for p in paths:
        img = load_image(p)
        for g in g_objs:
            a = time.perf_counter()
            cands = g.generate(img)
            b = time.perf_counter()
            t_gen += b - a
            for s in s_objs:
                if len(cands):
                    s.select(img, "a rectangle", cands)
                    n_sel += 1
            t_sel += time.perf_counter() - b
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "seconds": t2 - t1,
        "cpu_s": c2 - c1,
        "generator_s": t_gen,
        "selector_s": t_sel,
        "generator_passes": len(paths) * len(g_objs),
        "selector_passes": n_sel,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", "-C", type=int, default=3)
    ap.add_argument("--sams", "-S", type=int, default=2)
    ap.add_argument("--images", "-N", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--points", type=int, default=8, help="SAM points_per_side of the first generator config")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate baseline / matrix this many times and keep each one's fastest (shared machines)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--part", choices=("matrix", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        res = part_matrix(args) if args.part == "matrix" else part_baseline(args)
        print(json.dumps(res))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "scenes", args.images, args.size)
        parts: dict[str, dict] = {}
        for part in ("baseline", "matrix") * max(1, args.repeats):
            cmd = [
                sys.executable,
                __file__,
                "--part",
                part,
                "--data",
                str(data),
                "--work",
                tmp,
                "-C",
                str(args.clips),
                "-S",
                str(args.sams),
                "-N",
                str(args.images),
                "--points",
                str(args.points),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return out.returncode
            res = json.loads(out.stdout.strip().splitlines()[-1])
            if part not in parts or res["seconds"] < parts[part]["seconds"]:
                parts[part] = res
    m, b = parts["matrix"], parts["baseline"]
    res = {
        "C": args.clips,
        "S": args.sams,
        "N": args.images,
        "size": args.size,
        "matrix_s": round(m["seconds"], 3),
        "baseline_s": round(b["seconds"], 3),
        "overhead_ratio": round(m["seconds"] / b["seconds"], 3),
        "cpu_overhead_ratio": round(m["cpu_s"] / b["cpu_s"], 3),
        "baseline_generator_s": round(b["generator_s"], 3),
        "baseline_selector_s": round(b["selector_s"], 3),
        "generator_passes_matrix": m["generator_passes"],
        "generator_passes_baseline": b["generator_passes"],
        "rows": m["rows"],
        "repeats": args.repeats,
        "threads": os.environ.get("OMP_NUM_THREADS", ""),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.clips} CLIPs x {args.sams} SAM configs x {args.images} images ({args.size} px):")
        print(
            f"  matrix (lvlm bench)       {res['matrix_s']:.2f} s, {m['generator_passes']} generator passes, "
            f"{m['rows']} rows"
        )
        print(
            f"  bare component passes     {res['baseline_s']:.2f} s "
            f"(generators {res['baseline_generator_s']:.2f} s, "
            f"selectors {res['baseline_selector_s']:.2f} s)"
        )
        print(
            f"  overhead ratio            {res['overhead_ratio']:.3f}  (target <= 1.2; CPU time ratio "
            f"{res['cpu_overhead_ratio']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
