"""gScoreCAM: our batched on-device implementation vs a loop in the style of the gScoreCAM reference code.

The reference-style loop (written here after anguyen8/gScoreCAM ``pytorch_grad_cam/gscore_cam.py``, as
MedCLIP-SAM runs it) moves the activations and gradients to the CPU as numpy arrays, upsamples and
min-max normalises *every* channel there, builds the masked copies of the image for every channel on
the CPU, then for each batch of the top-k channels copies the batch to the device, runs the model, and
copies the logits back into a Python list. Ours keeps everything on the model's device, upsamples only
the top-k channels, batch by batch, and reads nothing back until the final map. Both weight the kept
channels by the softmax over the kept channels (the reference code also gives the unkept channels
``exp(0)/Z``; that quirk is left out so the two maps must agree).

Same model, same image, same text; one timed run each after one warm-up forward pass.

    python benchmarks/gscorecam_speed.py                                   # tiny-rn on the CPU
    python benchmarks/gscorecam_speed.py --clip OA-RN50 --checkpoint random  # RN50-size, random weights
    python benchmarks/gscorecam_speed.py --json                            # keys speedup, max_abs_diff, ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scene(h: int = 256, w: int = 320, seed: int = 0) -> np.ndarray:
    """A textured background with a few coloured shapes (H x W x 3 uint8)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60 + 60).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - 90) ** 2 + (xx - 100) ** 2 < 45**2] = (220, 40, 40)
    img[150:230, 180:290] = (40, 70, 220)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def reference_style(clip, pixels: torch.Tensor, text: torch.Tensor, topk: int, batch_size: int, scale: float):
    """gScoreCAM the way the reference code moves data: numpy on the CPU, per-batch copies to the device."""
    device = pixels.device
    acts_store, grads_store = [], []
    layer = clip.cam_target_layer()

    def hook(module, inputs, output):
        acts_store.append(clip.reshape_transform(output).detach().cpu().numpy())
        output.register_hook(lambda g: grads_store.append(clip.reshape_transform(g).detach().cpu().numpy()))

    handle = layer.register_forward_hook(hook)
    x = pixels.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logit = scale * (clip.encode_image(x).float() @ text.float().T)[0, 0]
        logit.backward()
    handle.remove()
    activations, grads = acts_store[0], grads_store[0]  # 1 x C x h x w numpy
    if getattr(clip, "is_vit", False):  # the reference's transformer path: the gradient at the CLS token
        raise SystemExit("the reference-style loop here covers CNN towers (use a ResNet CLIP)")
    with torch.no_grad():
        img = pixels.cpu().float()
        upsampled = F.interpolate(
            torch.from_numpy(activations).float(), size=img.shape[-2:], mode="bilinear", align_corners=True
        )  # every channel, on the CPU
        flat = upsampled.view(upsampled.size(0), upsampled.size(1), -1)
        mins, maxs = flat.min(dim=-1)[0][:, :, None, None], flat.max(dim=-1)[0][:, :, None, None]
        upsampled = (upsampled - mins) / (maxs - mins + 1e-8)
        masked = img[:, None] * upsampled[:, :, None]  # 1 x C x 3 x S x S on the CPU
        importance = torch.from_numpy(grads).float().mean(dim=(2, 3))
        indices = importance.topk(min(topk, importance.shape[1]))[1][0]
        chosen = masked[0, indices]
        scores = []
        for i in range(0, chosen.size(0), batch_size):
            batch = chosen[i : i + batch_size].to(device)
            out = (
                scale * (clip.encode_image(batch.to(pixels.dtype)).float() @ text.float().T.to(device))[:, 0]
            )
            scores.extend(out.float().cpu().numpy())
        scores = torch.tensor(np.asarray(scores, dtype=np.float32)).nan_to_num(nan=0.0)
        weights = torch.softmax(scores, dim=0).numpy()
        cam = np.einsum("c,chw->hw", weights, activations[0, indices.numpy()].astype(np.float32))
        cam = np.maximum(cam, 0)
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        size = tuple(pixels.shape[-2:])
        try:
            import cv2

            cam = cv2.resize(np.float32(cam), size[::-1])
        except ImportError:
            cam = F.interpolate(
                torch.from_numpy(cam)[None, None], size=size, mode="bilinear", align_corners=False
            )[0, 0].numpy()
        cam = cam - cam.min()
        return cam / (1e-7 + cam.max())


def run(
    clip_name: str = "tiny-rn",
    checkpoint: str | None = None,
    device: str = "auto",
    topk: int = 300,
    batch_size: int = 128,
    text: str = "a red circle",
) -> dict:
    from lvlm.components import resolve_device
    from lvlm.models.clip import load_clip
    from lvlm.selectors.cams import clip_logit_scale
    from lvlm.selectors.gscorecam import GScoreCAM
    from lvlm.selectors.saliency import SaliencyPrompter

    device = resolve_device(device)
    spec = {"name": clip_name}
    if checkpoint is not None:
        spec["checkpoint"] = checkpoint
    clip = load_clip(spec, device=device)
    prompter = SaliencyPrompter(
        clip=clip, method="gscorecam", topk=topk, batch_size=batch_size, device=device
    )
    pixels, _ = prompter._pixels(scene())
    t = prompter.text_features(text).to(pixels.device)
    scale = clip_logit_scale(clip)
    with torch.inference_mode():
        clip.encode_image(pixels)  # warm-up

    def timed(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if isinstance(out, torch.Tensor):
            out = out.cpu().numpy()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    ref, t_ref = timed(lambda: reference_style(clip, pixels, t, topk, batch_size, scale))
    ours, t_ours = timed(lambda: GScoreCAM(topk=topk, batch_size=batch_size)(clip, pixels, t))
    channels = clip.reshape_transform(_probe(clip, pixels)).shape[1]
    return {
        "clip": clip_name,
        "checkpoint": checkpoint or "preset default",
        "device": device,
        "input": int(pixels.shape[-1]),
        "channels": int(channels),
        "topk": int(min(topk, channels)),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "seconds_reference_style": round(t_ref, 4),
        "seconds_ours": round(t_ours, 4),
        "speedup": round(t_ref / t_ours, 3),
        "max_abs_diff": float(np.abs(ours - ref).max()),
    }


def _probe(clip, pixels):
    store = []
    h = clip.cam_target_layer().register_forward_hook(lambda m, i, o: store.append(o))
    with torch.inference_mode():
        clip.encode_image(pixels)
    h.remove()
    return store[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", default="tiny-rn", help="CLIP preset (a ResNet tower), default tiny-rn")
    ap.add_argument("--checkpoint", default=None, help="preset checkpoint: default | random | PATH")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--topk", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run(args.clip, args.checkpoint, args.device, args.topk, args.batch_size)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['clip']} ({res['checkpoint']}) on {res['device']}, {res['threads']} thread(s): "
            f"{res['input']} px, {res['channels']} channels, top-{res['topk']}, batch {res['batch_size']}"
        )
        print(f"  reference-style loop: {res['seconds_reference_style']:.3f} s")
        print(f"  ours:                 {res['seconds_ours']:.3f} s")
        print(f"  speedup {res['speedup']:.2f}x, max abs difference {res['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
