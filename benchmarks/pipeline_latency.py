"""End-to-end latency of a packaged pipeline (default: the embedded default) on the CPU, seconds per
image by stage.

Builds ``lvlm.Pipeline.from_config(--config)`` (timed separately: model loading), runs it on ``--n`` images
with ``--threads`` torch threads (default 2) and reports each stage of ``Result.timings`` (load, prompter,
segmenter, generator, selector, total): the first image apart (cold: lazy initialisation) and the mean /
median over the others, and the fp32 matmul rate measured before and after (on a shared machine, how much
CPU the run got). A text-prompted pipeline gets ``--prompt``; a box-prompted one (the embedded LiteMedSAM
default) the box of the central half of each image.

Images: the real ones under ../shared/data when present (nuclei 512x512 fluorescence, quokka 643x960 photo),
then synthetic scenes of ``--size`` until there are ``--n``.

``--encoder-backend`` sets the segmenter's ``encoder_backend`` (litemedsam, sam, mobilesam, medsam;
``auto``: ONNX Runtime on the CPU when installed); ``--encoder-backend compare`` builds the pipeline twice
(``torch`` and ``onnxruntime``), runs every image through both (alternating which goes first) and adds
``speedup`` (torch seconds per image / ONNX Runtime seconds per image) and ``max_mask_diff_px`` (pixels
where their masks differ).

    python benchmarks/pipeline_latency.py --json
    python benchmarks/pipeline_latency.py --config embedded --n 8 --threads 2 --json
    python benchmarks/pipeline_latency.py --encoder-backend compare --n 8 --json
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
    """GFLOP/s of an n x n x n fp32 matmul now: how much of the CPU this run actually gets (shared
    machines)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def build_pipeline(config: str, backend: str | None):
    """The pipeline of ``config``, with its segmenter's ``encoder_backend`` set when ``backend``."""
    import inspect

    from lvlm import Pipeline
    from lvlm.pipeline import load_config
    from lvlm.registry import get

    if backend is None:
        return Pipeline.from_config(config)
    cfg = load_config(config)
    seg = dict(cfg.get("segmenter") or {})
    if not seg or "encoder_backend" not in inspect.signature(get("segmenter", seg["name"]).obj).parameters:
        with_key = "litemedsam, sam, mobilesam, medsam"
        raise SystemExit(
            f"--encoder-backend needs a segmenter with an encoder_backend key ({with_key}); "
            f"{config} has {seg.get('name')!r}"
        )
    seg["encoder_backend"] = backend
    return Pipeline.from_config(cfg, segmenter=seg)


def encoder_backend(pipe) -> str:
    from lvlm.models.onnx import OnnxModule

    enc = getattr(getattr(pipe.segmenter, "model", None), "image_encoder", None)
    if enc is None:
        return "n/a"
    return "onnxruntime" if isinstance(enc, OnnxModule) else "torch"


def summary(rows: list[dict]) -> dict:
    warm = rows[1:]
    stages = [k for k in rows[0] if k not in ("image", "hw")]
    return {
        "seconds_per_image": statistics.mean(r["total"] for r in warm),
        "median_seconds_per_image": statistics.median(r["total"] for r in warm),
        "by_stage_mean_s": {k: statistics.mean(r.get(k, 0.0) for r in warm) for k in stages},
        "first_image_s": rows[0]["total"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="embedded")
    ap.add_argument("--n", type=int, default=6, help="images (the first one is reported apart, cold)")
    ap.add_argument("--size", default="480x640", help="HxW of the synthetic images")
    ap.add_argument("--prompt", default="a red triangle", help="text prompt for text-prompted pipelines")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--encoder-backend",
        default=None,
        choices=["auto", "torch", "onnxruntime", "compare"],
        help="the segmenter's encoder_backend (default: the config's)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))

    gemm_before = gemm_gflops()
    backends = ["torch", "onnxruntime"] if args.encoder_backend == "compare" else [args.encoder_backend]
    pipes, build_s = {}, {}
    for b in backends:
        t0 = time.perf_counter()
        pipes[b] = build_pipeline(args.config, b)
        build_s[b] = time.perf_counter() - t0
    size = tuple(int(v) for v in args.size.lower().split("x"))
    rows: dict = {b: [] for b in backends}
    diffs = []
    for name, img in images(max(2, args.n), size):
        h, w = img.shape[:2]
        kwargs = {}
        if next(iter(pipes.values())).needs_text:
            kwargs["prompt"] = args.prompt
        else:
            kwargs["box"] = [w / 4, h / 4, 3 * w / 4, 3 * h / 4]
        masks = []
        order = (
            list(pipes) if len(rows[backends[0]]) % 2 == 0 else list(pipes)[::-1]
        )  # alternate who goes first
        for b in order:
            res = pipes[b](img, **kwargs)
            masks.append(res.mask)
            rows[b].append({"image": name, "hw": [h, w], **{k: float(v) for k, v in res.timings.items()}})
        if len(masks) == 2:
            diffs.append(int((masks[0] != masks[1]).sum()))
    gemm_after = gemm_gflops()
    per = {b: summary(r) for b, r in rows.items()}
    main_b = backends[-1]
    pipe = pipes[main_b]
    out = {
        **per[main_b],
        "build_s": build_s[main_b],
        "config": args.config,
        "pipeline": repr(pipe),
        "encoder_backend": encoder_backend(pipe),
        "prompt": args.prompt if pipe.needs_text else "box: central half of the image",
        "threads": torch.get_num_threads(),
        "gemm_gflops_before_after": [gemm_before, gemm_after],
        "images": rows[main_b],
        "torch": torch.__version__,
    }
    if len(backends) == 2:
        out["by_backend"] = {b: {**per[b], "build_s": build_s[b], "images": rows[b]} for b in backends}
        out["speedup"] = per["torch"]["seconds_per_image"] / per["onnxruntime"]["seconds_per_image"]
        out["segmenter_speedup"] = (
            per["torch"]["by_stage_mean_s"]["segmenter"] / per["onnxruntime"]["by_stage_mean_s"]["segmenter"]
        )
        out["max_mask_diff_px"] = max(diffs)
    from amg_speed import cpu_model

    out["cpu"] = cpu_model()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{args.config}: {out['pipeline']} ({out['encoder_backend']} encoder) "
            f"on {out.get('cpu', 'CPU')}, "
            f"{out['threads']} threads; built in {out['build_s']:.2f} s"
        )
        if "speedup" in out:
            t = out["by_backend"]["torch"]["seconds_per_image"]
            print(
                f"torch encoder {t:.3f} s/image; onnxruntime {out['seconds_per_image']:.3f}: speedup "
                f"{out['speedup']:.2f}x (segmenter {out['segmenter_speedup']:.2f}x), masks differ in at most "
                f"{out['max_mask_diff_px']} px"
            )
        print(
            f"first image {out['first_image_s']:.3f} s; then {out['seconds_per_image']:.3f} s/image (mean of "
            f"{len(out['images']) - 1}): "
            + ", ".join(f"{k} {v:.3f}" for k, v in out["by_stage_mean_s"].items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
