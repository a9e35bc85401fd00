"""Batched detector -> segmenter against a per-image loop in lang-segment-anything's style, one run.

Both sides use the same models and images: a detector (default the tiny random GroundingDINO of the tests,
real transformers classes) and a prompted segmenter (default SAM's architecture at ``vit_tiny`` with
random weights, ``--segmenter litemedsam`` for the real LiteMedSAM).

- **loop** (lang-sam's ``LangSAM.predict`` one image at a time, on the official code): for each image, the
  processor on that image and its prompt, one detector forward, transformers'
  ``post_process_grounded_object_detection`` (box 0.3, text 0.25), then every box of the image in one call of
  the official predictor (segment_anything's ``SamPredictor.set_image`` + ``predict_torch``; for LiteMedSAM,
  which has no predictor class, its mask decoder's own forward on the image's embedding);
- **batched**: ``Pipeline.run_many(batch_size=--n)`` with the ``detector`` prompter: one detector forward for
  all images (``prompts_many``), one encoder pass for all images (``embed_many``), and the boxes of all
  images through shared mask-decoder calls (``lvlm.models.mask_decoding.decode_many``).

Reported: seconds for each side (best of ``--repeats``, the two alternating), ``speedup`` (loop / batched),
the detector stage alone (``detector_loop_s``, ``detector_batched_s``, ``detector_speedup``),
``max_box_diff`` (largest coordinate difference, in pixels, between the two sides' boxes of the same image;
the images share one size, so the batch needs no padding), ``box_count_mismatch`` (images whose box
counts differ) and ``min_mask_iou`` (the lowest IoU between the two sides' union masks of an image).

    python benchmarks/detector_batch.py --json
    python benchmarks/detector_batch.py --n 8 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(n: int, h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
        out.append(img)
    return out


def segmenter_spec(name: str) -> dict:
    if name == "sam-tiny":
        return {"name": "sam", "model_type": "vit_tiny", "checkpoint": None, "device": "cpu"}
    if name == "litemedsam":
        return {"name": "litemedsam", "device": "cpu", "encoder_backend": "torch"}
    raise SystemExit(f"--segmenter {name!r}: sam-tiny or litemedsam")


def official_segment(segmenter):
    """``segment(image, boxes) -> H x W union mask`` on the official code: segment_anything's
    ``SamPredictor`` for SAM; for LiteMedSAM its decoder's own forward (``fast_decoder`` off)."""
    import torch
    from segment_anything import SamPredictor

    from lvlm.types import Prompts

    if segmenter.source.startswith("sam"):
        predictor = SamPredictor(segmenter.model)

        def segment(img, boxes):
            predictor.set_image(img)
            bt = torch.as_tensor(boxes, dtype=torch.float32)
            bt = predictor.transform.apply_boxes_torch(bt, img.shape[:2])
            masks, _, _ = predictor.predict_torch(None, None, boxes=bt, multimask_output=False)
            return masks[:, 0].any(0).numpy()

        return segment
    def segment(img, boxes):
        segmenter.adapter.fast_decoder = False
        try:
            return segmenter.segment(img, Prompts(boxes=boxes)).union()
        finally:
            segmenter.adapter.fast_decoder = True

    return segment


def loop_lang_sam(prompter, segment, images, prompts):
    """lang-sam's per-image recipe with transformers directly: processor, forward, post-processing, then the
    official predictor on the image's boxes."""
    import torch

    proc, net = prompter.detector.processor, prompter.detector.model
    boxes_out, masks_out = [], []
    t_det = 0.0
    for img, text in zip(images, prompts):
        t0 = time.perf_counter()
        inputs = proc(images=img, text=text.lower().strip().rstrip(".") + ".", return_tensors="pt")
        with torch.inference_mode():
            out = net(**inputs)
        res = proc.post_process_grounded_object_detection(
            out, inputs.input_ids, threshold=0.3, text_threshold=0.25, target_sizes=[img.shape[:2]]
        )[0]
        boxes = res["boxes"].numpy()
        h, w = img.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        boxes = boxes[np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 1.0]
        boxes_out.append(boxes)
        t_det += time.perf_counter() - t0
        masks_out.append(segment(img, boxes) if len(boxes) else np.zeros((h, w), bool))
    return boxes_out, masks_out, t_det


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="images (one batch)")
    ap.add_argument("--size", default="96x128", help="HxW of the images")
    ap.add_argument("--detector", default="tiny-random-grounding-dino", help="detector prompter model")
    ap.add_argument("--segmenter", default="sam-tiny", help="sam-tiny or litemedsam")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from lvlm.pipeline import EmptyMaskWarning, Pipeline

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    images = make_images(args.n, h, w)
    prompts = ["a cat. a dog", "red car", "a cat", "bus"] * (args.n // 4 + 1)
    prompts = prompts[: args.n]
    pipe = Pipeline.from_config(
        {
            "prompter": {"name": "detector", "model": args.detector, "device": "cpu", "batch_size": args.n},
            "segmenter": segmenter_spec(args.segmenter),
            "combine": "union",
        }
    )
    warnings.simplefilter("ignore", EmptyMaskWarning)
    # warm-up both paths once (lazy initialisation), then alternate
    pipe.run_many(images[:2], prompts[:2], progress=False, batch_size=2)
    segment = official_segment(pipe.segmenter)
    loop_lang_sam(pipe.prompter, segment, images[:2], prompts[:2])
    t_loop, t_batch, det_loop, det_batch = [], [], [], []
    for r in range(args.repeats):
        for side in ("loop", "batch") if r % 2 == 0 else ("batch", "loop"):
            pipe.segmenter.__dict__.pop("_embed_cache", None)  # no embedding reuse across runs
            t0 = time.perf_counter()
            if side == "loop":
                loop_boxes, loop_masks, t_det = loop_lang_sam(pipe.prompter, segment, images, prompts)
                t_loop.append(time.perf_counter() - t0)
                det_loop.append(t_det)
            else:
                results = pipe.run_many(images, prompts, progress=False, batch_size=args.n)
                t_batch.append(time.perf_counter() - t0)
                det_batch.append(sum(r.timings.get("prompter", 0.0) for r in results))
    batch_boxes = [r.prompts.boxes for r in results]
    diffs, mismatch = [], 0
    for a, b in zip(loop_boxes, batch_boxes):
        if a.shape != b.shape:
            mismatch += 1
            continue
        if len(a):
            oa, ob = np.lexsort(np.round(a, 2).T[::-1]), np.lexsort(np.round(b, 2).T[::-1])
            diffs.append(float(np.abs(a[oa] - b[ob]).max()))
    ious = []
    for a, r in zip(loop_masks, results):
        union = np.logical_or(a, r.mask).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(a, r.mask).sum() / union))
    out = {
        "n_images": args.n,
        "size": [h, w],
        "detector": args.detector,
        "segmenter": args.segmenter,
        "threads": args.threads,
        "repeats": args.repeats,
        "loop_s": round(min(t_loop), 4),
        "batched_s": round(min(t_batch), 4),
        "speedup": round(min(t_loop) / min(t_batch), 3),
        "detector_loop_s": round(min(det_loop), 4),
        "detector_batched_s": round(min(det_batch), 4),
        "detector_speedup": round(min(det_loop) / min(det_batch), 3),
        "max_box_diff": max(diffs) if diffs else 0.0,
        "box_count_mismatch": mismatch,
        "min_mask_iou": round(min(ious), 6),
        "boxes_per_image": float(np.mean([len(b) for b in batch_boxes])),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
