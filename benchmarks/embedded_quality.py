"""Quality of the offline defaults on held-out generated scenes: embedded default, base pipeline,
CLIP retrieval.

All three use only what ships with lvlm (the ``lvlm-shapes`` CLIP and LiteMedSAM's weights), so this
runs offline on a CPU. Scenes are :class:`lvlm.data.synthetic.ScenesDataset`'s held-out seeds (from
10,000,000; the CLIP was trained on seeds below 8,000 and validated on seeds from 5,000,000), one named
object per scene:

- ``miou``: the embedded default (``configs/embedded.yaml``: gScoreCAM saliency of ``lvlm-shapes`` -> dense
  CRF -> box -> LiteMedSAM) - mean IoU of its mask with the named object's true mask;
- ``selection_accuracy`` / ``base_miou``: the base pipeline (``configs/embedded_base.yaml``: LiteMedSAM
  everything mode -> CLIP selector) - fraction of scenes whose selected mask has IoU > 0.5 with the
  named object, and the mean IoU;
- ``retrieval_top1``: zero-shot caption retrieval of ``lvlm-shapes`` on single-object held-out scenes
  (image -> the right caption among the 30 of ``all_captions()``).

Both pipelines use LiteMedSAM with the same weights and preprocessing, so the benchmark computes each
scene's image embedding once and gives it to both (the results are those of the two configs run
separately). ::

    OMP_NUM_THREADS=1 python benchmarks/embedded_quality.py --n 200 --json
    python benchmarks/embedded_quality.py --checkpoint runs/shapes/best/open_clip_model.safetensors
    python benchmarks/embedded_quality.py --retrieval-only --n 1000 --checkpoint runs/shapes/best  # seconds
    python benchmarks/embedded_quality.py --n 200 --workers 2 \\
        --json  # scenes split over 2 one-thread processes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def with_checkpoint(cfg: dict, checkpoint: str | None, device: str) -> dict:
    """The config with every ``lvlm-shapes`` CLIP pointed at ``checkpoint`` and every stage on ``device``."""
    cfg = json.loads(json.dumps(cfg))
    for stage in ("prompter", "selector", "segmenter", "generator"):
        spec = cfg.get(stage)
        if not isinstance(spec, dict):
            continue
        spec["device"] = device
        for key in ("clip", "model"):
            clip = spec.get(key)
            if clip == "lvlm-shapes" or (isinstance(clip, dict) and clip.get("name") == "lvlm-shapes"):
                clip = {"name": "lvlm-shapes"} if isinstance(clip, str) else dict(clip)
                if checkpoint:
                    clip["checkpoint"] = checkpoint
                spec[key] = clip
    return cfg


def retrieval_top1(clip, n: int, start: int, batch_size: int = 64) -> dict[str, float]:
    """Top-1 image -> caption accuracy on ``n`` single-object scenes (seeds ``start ..``) among all captions,
    and how often the predicted caption has the right colour / the right shape."""
    import torch

    from lvlm.data.synthetic import all_captions, make_scene

    captions = all_captions()
    with torch.no_grad():
        text = clip.encode_text(captions, normalize=True).float()
        hits = np.zeros(3)
        for s in range(0, n, batch_size):
            scenes = [make_scene(start + i, n_objects=1) for i in range(s, min(n, s + batch_size))]
            pixels = clip.preprocess(np.stack([sc.image for sc in scenes]))
            pred = (clip.encode_image(pixels, normalize=True).float() @ text.T).argmax(1).cpu().numpy()
            for p, sc in zip(pred, scenes):
                o, words = sc.objects[0], captions[p].split()
                hits += [captions[p] == o.caption, o.colour in words, o.shape in words]
    return dict(zip(("top1", "colour", "shape"), (hits / n).tolist()))


def build_pipelines(args):
    """The embedded pipeline and (unless --no-base) the base pipeline, sharing one LiteMedSAM encoder pass."""
    from lvlm.pipeline import Pipeline, load_config

    emb = Pipeline.from_config(with_checkpoint(load_config(args.config), args.checkpoint, args.device))
    base = None
    if not args.no_base:
        base = Pipeline.from_config(
            with_checkpoint(load_config(args.base_config), args.checkpoint, args.device)
        )
        seg, gen = emb.segmenter, base.generator
        if (
            hasattr(seg, "embed")
            and hasattr(gen, "predictor")
            and type(seg).__name__ == "LiteMedSamSegmenter"
        ):
            # same network, weights and preprocessing: one encoder pass per scene for both pipelines
            def shared_embed(image, seg=seg):
                e = seg.embed(image)
                return e.features, e.input_size

            gen.predictor.embed = shared_embed
    return emb, base


def score_scenes(args, start: int, n: int, progress: bool) -> list[dict]:
    """One row per held-out scene ``start .. start + n - 1``: IoU of each pipeline's mask with the named
    object."""
    from tqdm.auto import tqdm

    from lvlm.data.synthetic import ScenesDataset, make_scene
    from lvlm.pipeline import EmptyMaskWarning

    emb, base = build_pipelines(args)
    rows = []
    samples = ScenesDataset(n=n, start=start)
    for i, s in enumerate(
        tqdm(samples, total=len(samples), desc="scenes", unit="scene", disable=not progress)
    ):
        # does another object of the scene have the named object's colour? (then only the shape word tells)
        others = make_scene(start + i, size=samples.size, n_objects=samples.objects_per_scene).objects
        row = {
            "id": s.id,
            "prompt": s.prompt,
            "colour_shared": sum(o.colour == s.tags["colour"] for o in others) > 1,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyMaskWarning)
            t0 = time.perf_counter()
            row["iou"] = iou(emb(s.image, s.prompt).mask, s.mask)
            row["seconds"] = time.perf_counter() - t0
            if base is not None:
                t0 = time.perf_counter()
                row["base_iou"] = iou(base(s.image, s.prompt).mask, s.mask)
                row["base_seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def score_scenes_in_workers(args, argv: list[str]) -> list[dict]:
    """Split the scenes over ``args.workers`` processes with one torch thread each; gather their rows."""
    k = args.workers
    bounds = [args.start + (args.n * i) // k for i in range(k + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(k):
            out = Path(tmp) / f"rows{i}.jsonl"
            cmd = [
                sys.executable,
                __file__,
                *strip_options(argv, ("--workers", "--start", "--n", "--per-sample")),
                "--workers",
                "1",
                "--start",
                str(bounds[i]),
                "--n",
                str(bounds[i + 1] - bounds[i]),
                "--rows-only",
                str(out),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), out))
        rows = []
        for proc, out in procs:
            if proc.wait() != 0:
                raise SystemExit(f"a worker failed (exit {proc.returncode}): {' '.join(proc.args)}")
            rows += [json.loads(line) for line in out.read_text().splitlines()]
    return rows


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the given ``--name value`` / ``--name=value`` options."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not any(a.startswith(n + "=") for n in names):
            out.append(a)
    return out


def summarise(rows: list[dict]) -> dict:
    """The benchmark's metrics from the per-scene rows (also for the colour-unique / colour-shared splits)."""
    ious = np.array([r["iou"] for r in rows])
    shared = np.array([r["colour_shared"] for r in rows], bool)
    base = np.array([r["base_iou"] for r in rows]) if rows and "base_iou" in rows[0] else None

    def part(values, sel, f):
        return float(f(values[sel])) if sel.any() else None

    out = {
        "miou": float(ious.mean()),
        "selection_accuracy": float((base > 0.5).mean()) if base is not None else None,
        "base_miou": float(base.mean()) if base is not None else None,
        "miou_iou_above_0.5": float((ious > 0.5).mean()),
        "n_colour_shared": int(shared.sum()),  # scenes where another object has the named object's colour
        "miou_colour_unique": part(ious, ~shared, np.mean),
        "miou_colour_shared": part(ious, shared, np.mean),
        "seconds_per_image_embedded": float(np.mean([r["seconds"] for r in rows])),
        "seconds_per_image_base": float(np.mean([r["base_seconds"] for r in rows]))
        if base is not None
        else None,
    }
    if base is not None:
        out["selection_accuracy_colour_unique"] = part(base > 0.5, ~shared, np.mean)
        out["selection_accuracy_colour_shared"] = part(base > 0.5, shared, np.mean)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="held-out scenes (default 200)")
    ap.add_argument("--start", type=int, default=10_000_000, help="first seed (default 10,000,000: held out)")
    ap.add_argument("--checkpoint", help="lvlm-shapes weights to evaluate (default: the packaged ones)")
    ap.add_argument("--config", default="embedded", help="embedded pipeline config (default: embedded)")
    ap.add_argument(
        "--base-config", default="embedded_base", help="base pipeline config (default: embedded_base)"
    )
    ap.add_argument("--no-base", action="store_true", help="skip the base pipeline")
    ap.add_argument(
        "--retrieval-only", action="store_true", help="only the CLIP's caption retrieval (seconds)"
    )
    ap.add_argument(
        "--workers", type=int, default=1, help="split the scenes over this many one-thread processes"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--per-sample", metavar="PATH", help="also write one JSON line per scene (id, prompt, IoUs)"
    )
    ap.add_argument("--rows-only", metavar="PATH", help=argparse.SUPPRESS)  # a worker of --workers
    args = ap.parse_args(argv)
    if args.workers < 1 or args.n < 1:
        ap.error("--workers and --n must be >= 1")

    from lvlm.models.clip import load_clip

    if args.rows_only:
        rows = score_scenes(args, args.start, args.n, progress=False)
        Path(args.rows_only).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return 0
    t_start = time.perf_counter()
    clip_spec = {"name": "lvlm-shapes", **({"checkpoint": args.checkpoint} if args.checkpoint else {})}
    clip = load_clip(clip_spec, device=args.device)
    t0 = time.perf_counter()
    retrieval = retrieval_top1(clip, args.n, args.start)
    t_retrieval = time.perf_counter() - t0
    out = {
        "retrieval_top1": retrieval["top1"],
        "retrieval_colour_correct": retrieval["colour"],
        "retrieval_shape_correct": retrieval["shape"],
        "n": args.n,
        "checkpoint": args.checkpoint or "packaged",
        "seconds_retrieval": t_retrieval,
    }
    if not args.retrieval_only:
        if args.workers > 1:
            rows = score_scenes_in_workers(args, argv)
        else:
            rows = score_scenes(args, args.start, args.n, progress=not args.json)
        out = {
            **summarise(rows),
            **out,
            "workers": args.workers,
            "seconds_per_image": (time.perf_counter() - t_start) / args.n,
        }
        if args.per_sample:
            Path(args.per_sample).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:34s} {v:.4f}" if isinstance(v, float) else f"{k:34s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
