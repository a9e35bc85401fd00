"""SAM's mask decoder: segment_anything's own forward (one call per image, as ``SamPredictor.predict_torch``)
against ``lvlm.models.mask_decoding.decode_many`` (all prompts of all images in shared calls), one run.

Same modules and weights on both sides (random initialisation of the real classes; speed does not depend
on the values). ``--model sam-vit`` is the decoder of SAM ViT-H / L / B, MobileSAM and MedSAM (256
channels on a 64 x 64 embedding); ``vit-tiny`` the 64-channel test SAM on 16 x 16; ``litemedsam`` LiteMedSAM's
real decoder. Prompts: ``--boxes`` per image on ``--images`` images, ``--batch-size`` prompts per call.

Reported: ``official_s`` and ``fast_s`` (best of ``--repeats``, alternating), ``speedup``, ``max_logit_diff``
(largest difference of the low-res logits, relative to their largest magnitude) and ``max_iou_diff``.

    python benchmarks/mask_decoder_speed.py --json
    python benchmarks/mask_decoder_speed.py --model vit-tiny --images 8 --boxes 15 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parts(name: str):
    import torch
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    if name == "sam-vit":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pe = PromptEncoder(
                embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
            )
            dec = MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            )
        return pe.eval(), dec.eval(), 1024
    from lvlm.models.sam import build_litemedsam, build_sam

    if name == "vit-tiny":
        m = build_sam("vit_tiny", None, "cpu", encoder_backend="torch")
    elif name == "litemedsam":
        m = build_litemedsam("default", "cpu", encoder_backend="torch")
    else:
        raise SystemExit(f"--model {name!r}: sam-vit, vit-tiny or litemedsam")
    return m.prompt_encoder, m.mask_decoder, 256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sam-vit", help="sam-vit, vit-tiny or litemedsam")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--boxes", type=int, default=16, help="boxes per image")
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per decoder call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from lvlm.models.mask_decoding import decode_many

    torch.set_num_threads(args.threads)
    pe, dec, size = parts(args.model)
    g = torch.Generator().manual_seed(0)
    c, (h, w) = dec.transformer_dim, pe.image_embedding_size
    feats = torch.randn(args.images, c, h, w, generator=g)
    k = args.images * args.boxes
    xy = torch.rand(k, 2, generator=g) * size * 0.6
    boxes = torch.cat([xy, xy + 8 + torch.rand(k, 2, generator=g) * size * 0.35], 1)
    index = torch.arange(args.images).repeat_interleave(args.boxes)
    bs = args.batch_size

    def official():
        lows, ious = [], []
        for i in range(args.images):
            rows = boxes[index == i]
            for s in range(0, len(rows), bs):
                sparse, dense = pe(points=None, boxes=rows[s : s + bs], masks=None)
                lo, io = dec(
                    image_embeddings=feats[i : i + 1],
                    image_pe=pe.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                lows.append(lo)
                ious.append(io)
        return torch.cat(lows), torch.cat(ious)

    def fast():
        got = [decode_many(pe, dec, feats, index[s : s + bs], boxes[s : s + bs]) for s in range(0, k, bs)]
        return torch.cat([a for a, _ in got]), torch.cat([b for _, b in got])

    times = {"official": [], "fast": []}
    with torch.inference_mode():
        ref, mine = official(), fast()  # warm-up, and the outputs compared
        for r in range(args.repeats):
            for side in ("official", "fast") if r % 2 == 0 else ("fast", "official"):
                t0 = time.perf_counter()
                (official if side == "official" else fast)()
                times[side].append(time.perf_counter() - t0)
    scale = max(1.0, float(ref[0].abs().max()))
    out = {
        "model": args.model,
        "images": args.images,
        "boxes_per_image": args.boxes,
        "batch_size": bs,
        "threads": args.threads,
        "official_s": round(min(times["official"]), 4),
        "fast_s": round(min(times["fast"]), 4),
        "speedup": round(min(times["official"]) / min(times["fast"]), 3),
        "max_logit_diff": float((ref[0] - mine[0]).abs().max()) / scale,
        "max_iou_diff": float((ref[1] - mine[1]).abs().max()),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
