"""Saliency pipeline: gScoreCAM / HilaCAM against independent references, saliency -> prompts, the prompter
and the pipeline with LiteMedSAM."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvlm.errors import ConfigError
from lvlm.registry import available, build, check_kwargs, get
from lvlm.selectors import prompts_from_saliency as pfs
from lvlm.selectors.cams import ClipSimilarity, clip_logit_scale
from lvlm.selectors.saliency import SaliencyPrompter

CONFIG_DIR = Path(__file__).resolve().parents[1] / "lvlm" / "configs" / "gscorecam"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_rn():
    return build("clip", "tiny-rn", device="cpu")


@pytest.fixture(scope="module")
def tiny_vit():
    return build("clip", "tiny-vit", device="cpu")


def _inputs(clip, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    img[20:60, 30:70] = (230, 40, 40)
    pixels = clip.preprocess([img])
    text = clip.encode_text(["a red square"]).detach()
    return pixels, text


def _scene(h=96, w=128, box=(40, 24, 96, 72), seed=0):
    """A noisy grey image with one red rectangle (xyxy ``box``)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(110, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = np.clip(rng.normal((210, 40, 35), 12, (y1 - y0, x1 - x0, 3)), 0, 255).astype(np.uint8)
    return img, np.asarray(box, np.float32)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def redness(clip, pixels, text_features):
    """A stub saliency method concentrated on red pixels (computed from the CLIP input itself)."""
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    rgb = (pixels.float().cpu() * std + mean)[0]
    r = (rgb[0] - 0.5 * (rgb[1] + rgb[2])).clamp(min=0)
    return r / r.max().clamp(min=1e-6)


# --------------------------------------------------------------------------------------------------
# gScoreCAM == Score-CAM (pytorch-grad-cam) with every channel; top-k == Score-CAM on those channels
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["tiny_rn", "tiny_vit"])
def test_gscorecam_all_channels_equals_pytorch_grad_cam_scorecam(arch, request):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    clip = request.getfixturevalue(arch)
    pixels, text = _inputs(clip)
    ours = build("saliency", "gscorecam", topk=None, batch_size=64)(clip, pixels, text)

    model = ClipSimilarity(clip, text, clip_logit_scale(clip))
    cam = gc.ScoreCAM(
        model=model, target_layers=[clip.cam_target_layer()], reshape_transform=clip.reshape_transform
    )
    cam.batch_size = 32
    ref = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(0)])[0]
    cam.activations_and_grads.release()
    assert ours.shape == ref.shape == tuple(pixels.shape[-2:])
    assert float(ours.max()) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(ours.numpy() - ref).max() < 1e-4


def test_gscorecam_topk_is_scorecam_on_the_top_gradient_channels(tiny_rn):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    clip = tiny_rn
    pixels, text = _inputs(clip, seed=1)
    model = ClipSimilarity(clip, text, clip_logit_scale(clip))
    target = [ClassifierOutputTarget(0)]
    grad_cam = gc.GradCAM(model=model, target_layers=[clip.cam_target_layer()])
    grad_cam(input_tensor=pixels, targets=target)
    grads = grad_cam.activations_and_grads.gradients[0].numpy()  # 1 x C x h x w
    grad_cam.activations_and_grads.release()
    k = 37
    idx = np.argsort(-grads.mean(axis=(2, 3))[0], kind="stable")[:k]
    idx_t = torch.as_tensor(idx.copy())

    cam = gc.ScoreCAM(
        model=model, target_layers=[clip.cam_target_layer()], reshape_transform=lambda a: a[:, idx_t]
    )  # Score-CAM restricted to those channels
    ref = cam(input_tensor=pixels, targets=target)[0]
    cam.activations_and_grads.release()
    ours = build("saliency", "gscorecam", topk=k)(clip, pixels, text)
    assert np.abs(ours.numpy() - ref).max() < 1e-4
    frac = build("saliency", "gscorecam", topk=k / grads.shape[1])(clip, pixels, text)
    assert torch.allclose(frac, ours, atol=1e-6)


def test_gscorecam_topk_validation():
    from lvlm.selectors.gscorecam import resolve_topk

    assert resolve_topk(300, 256) == 256
    assert resolve_topk(0.1, 2048) == 205
    assert resolve_topk("all", 7) == resolve_topk(None, 7) == 7
    for bad in (0, -3, "half", 1.5):
        with pytest.raises(ValueError):
            resolve_topk(bad, 10)


@pytest.mark.parametrize("name", ["gradcam", "scorecam"])
def test_pytorch_grad_cam_wrappers_run(name, tiny_rn):
    pytest.importorskip("pytorch_grad_cam")
    pixels, text = _inputs(tiny_rn)
    sal = build("saliency", name, batch_size=128)(tiny_rn, pixels, text)
    assert sal.shape == tuple(pixels.shape[-2:])
    assert float(sal.min()) >= 0 and float(sal.max()) <= 1 + 1e-6


# --------------------------------------------------------------------------------------------------
# HilaCAM against an independent implementation (unmodified forward + the chain rule by hand)
# --------------------------------------------------------------------------------------------------
def _hila_reference(clip, pixels, text):
    """Chefer et al.'s relevance from the model's own nn.MultiheadAttention: probabilities from a separate
    ``need_weights=True`` call, dL/dP = dL/dO_h V_h^T from the gradient at each attention output."""
    recs = []

    def hook(m, args, kwargs, out):
        rec = {"m": m, "q": (args[0] if args else kwargs["query"]).detach()}
        out[0].register_hook(lambda g, rec=rec: rec.__setitem__("g", g))
        recs.append(rec)

    handles = [
        blk.attn.register_forward_hook(hook, with_kwargs=True)
        for blk in clip.model.visual.transformer.resblocks
    ]
    x = pixels.clone().requires_grad_(True)
    score = clip.model.logit_scale.exp() * (clip.encode_image(x) @ text.T)[0, 0]
    score.backward()
    for h in handles:
        h.remove()
    r = None
    with torch.no_grad():
        for rec in recs:
            m, q, g = rec["m"], rec["q"], rec["g"]
            _, probs = m(q, q, q, need_weights=True, average_attn_weights=False)  # B x H x N x N
            e, nh = m.embed_dim, m.num_heads
            hd = e // nh
            v = (
                (q @ m.in_proj_weight[2 * e :].T + m.in_proj_bias[2 * e :])
                .reshape(*q.shape[:2], nh, hd)
                .transpose(1, 2)
            )
            d_out = (g @ m.out_proj.weight).reshape(*q.shape[:2], nh, hd).transpose(1, 2)
            d_probs = d_out @ v.transpose(-1, -2)
            a = (d_probs * probs)[0].clamp(min=0).mean(0)
            r = torch.eye(a.shape[0]) if r is None else r
            r = r + a @ r
    g = math.isqrt(r.shape[0] - 1)
    rel = F.interpolate(
        r[0, 1:].reshape(1, 1, g, g), size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False
    )[0, 0]
    return (rel - rel.min()) / (rel.max() - rel.min())


def test_hilacam_matches_independent_reference(tiny_vit):
    pixels, text = _inputs(tiny_vit, seed=2)
    ours = build("saliency", "hilacam")(tiny_vit, pixels, text)
    ref = _hila_reference(tiny_vit, pixels, text)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4
    # the model is left as it was: its attention modules run their own forward again
    assert all("forward" not in blk.attn.__dict__ for blk in tiny_vit.model.visual.transformer.resblocks)


def test_hilacam_and_gscorecam_on_a_timm_trunk():
    """BiomedCLIP-style towers (open_clip TimmModel around a timm ViT) work too, and are left as they were."""
    pytest.importorskip("timm")
    from open_clip.model import CLIP

    from lvlm.models.clip import OpenClipModel, _tokenizer_for_cfg

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 64,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = CLIP(**cfg)
    model.visual.set_input_size(64)  # timm builds the ViT for 224 px
    clip = OpenClipModel(model, _tokenizer_for_cfg(cfg), name="timm-tiny", device="cpu", model_cfg=cfg)
    assert clip.image_size == 64
    pixels, text = _inputs(clip)
    blocks = clip.model.visual.trunk.blocks
    fused = [b.attn.fused_attn for b in blocks]
    for name in ("hilacam", "gscorecam"):
        sal = (
            build("saliency", name, topk=64)(clip, pixels, text)
            if name == "gscorecam"
            else build("saliency", name)(clip, pixels, text)
        )
        assert sal.shape == (64, 64) and not sal.requires_grad
        assert float(sal.max()) == pytest.approx(1.0, abs=1e-5) and float(sal.min()) == 0.0
    assert [b.attn.fused_attn for b in blocks] == fused
    assert all(not b.attn.attn_drop._forward_hooks for b in blocks)


def test_hilacam_needs_a_vit(tiny_rn):
    pixels, text = _inputs(tiny_rn)
    with pytest.raises(ConfigError, match="ViT"):
        build("saliency", "hilacam")(tiny_rn, pixels, text)


# --------------------------------------------------------------------------------------------------
# saliency -> prompts
# --------------------------------------------------------------------------------------------------
def _blob_saliency(h, w, box, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    x0, y0, x1, y1 = box
    cx, cy, sx, sy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    d = np.maximum(np.abs(xx + 0.5 - cx) / sx, np.abs(yy + 0.5 - cy) / sy)
    sal = 1.0 / (1.0 + np.exp((d - 1.0) * 12))  # ~1 inside the box, falls off at its edge
    return np.clip(sal + rng.normal(0, noise, (h, w)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("threshold", ["otsu", "kmeans", 0.5])
def test_concentrated_saliency_gives_the_object_box(threshold):
    box = (50, 30, 130, 90)
    sal = pfs.smooth(_blob_saliency(120, 160, box), 0.02)
    mask, _ = pfs.binarize(sal, threshold)
    boxes, _regions = pfs.boxes_from_mask(mask, "largest")
    assert len(boxes) == 1
    assert _iou(boxes[0], box) > 0.8


def test_box_modes_and_points():
    a, b = (10, 10, 50, 40), (90, 60, 150, 110)
    sal = np.maximum(_blob_saliency(120, 160, a, noise=0), _blob_saliency(120, 160, b, noise=0))
    mask, _ = pfs.binarize(pfs.smooth(sal, 0), "otsu")
    boxes, regions = pfs.boxes_from_mask(mask, "all")
    assert len(boxes) == 2 and _iou(boxes[0], b) > 0.8 and _iou(boxes[1], a) > 0.8  # largest first
    merged, _ = pfs.boxes_from_mask(mask, "merged")
    assert len(merged) == 1 and _iou(merged[0], (10, 10, 150, 110)) > 0.8
    assert len(pfs.boxes_from_mask(mask, "all", min_area=0.2)[0]) == 0  # both regions < 20 % of the image
    assert len(pfs.boxes_from_mask(mask, "all", max_boxes=1)[0]) == 1
    pts, labels = pfs.points_for_regions(sal, regions, boxes, positive=2, negative=1)
    assert pts.shape == (2, 3, 2) and labels.tolist() == [[1, 1, 0], [1, 1, 0]]
    for k, region in enumerate(regions):
        for (x, y), lab in zip(pts[k], labels[k]):
            assert region[int(y), int(x)] == bool(lab)  # positives inside, negatives outside the region
    assert len(pfs.boxes_from_mask(np.zeros((8, 8), bool), "largest")[0]) == 0


def test_otsu_and_sigma_units():
    v = np.concatenate([np.full(100, 0.1), np.full(50, 0.8)])
    assert 0.1 < pfs.otsu_threshold(v) < 0.8 and 0.1 < pfs.kmeans_threshold(v) < 0.8
    assert pfs.sigma_pixels(0.05, (200, 100)) == pytest.approx(5.0)
    assert pfs.sigma_pixels(3, (200, 100)) == 3.0
    with pytest.raises(ValueError):
        pfs.threshold_value(np.zeros(3), "median")


# --------------------------------------------------------------------------------------------------
# the prompter and the pipeline
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resize", ["stretch", "pad"])
@pytest.mark.parametrize("crf", [None, {"name": "torch"}])
def test_prompter_box_from_concentrated_saliency(resize, crf, tiny_rn):
    img, box = _scene()
    prompter = SaliencyPrompter(clip=tiny_rn, method=redness, resize=resize, crf=crf, points=1, device="cpu")
    if crf is not None:
        assert prompter.crf.max_pixels == 4096  # the CPU default
        prompter.crf.max_pixels = 2048
    prompts, extras = prompter.prompts(img, "a red square")
    assert extras["saliency"].shape == img.shape[:2] and extras["saliency"].dtype == np.float32
    assert ("crf" in extras) == (crf is not None)
    assert len(prompts) == 1 and prompts.text == "a red square"
    assert _iou(prompts.boxes[0], box) > 0.8
    x, y = prompts.points[0, 0]
    assert box[0] <= x < box[2] and box[1] <= y < box[3] and prompts.point_labels[0, 0] == 1


def test_prompter_builds_by_name_and_runs_gscorecam(tiny_vit):
    prompter = build(
        "prompter",
        "saliency",
        clip="tiny-rn",
        method="gscorecam",
        topk=0.25,
        batch_size=64,
        templates=["a photo of {}.", "{}"],
        crf={"name": "torch", "iterations": 2, "max_pixels": 1024},
        device="cpu",
    )
    assert prompter.method.topk == 0.25 and prompter.crf.iterations == 2
    img, _ = _scene(seed=3)
    prompts, extras = prompter.prompts(img, "a red square")
    assert extras["crf"].shape == img.shape[:2]
    assert prompts.boxes is None or prompts.boxes.shape[1] == 4
    hila = SaliencyPrompter(clip=tiny_vit, method="hilacam", device="cpu")
    assert hila.saliency(img, "a red square").shape == img.shape[:2]


def test_prompter_config_errors(tiny_rn):
    for bad in (
        {"box_mode": "biggest"},
        {"threshold": "median"},
        {"templates": ["no slot"]},
        {"resize": "crop"},
        {"box_mode": "none"},
    ):
        with pytest.raises(ConfigError):
            SaliencyPrompter(clip=tiny_rn, method=redness, device="cpu", **bad)
    with pytest.raises(ConfigError, match="unknown"):
        build("prompter", "saliency", clip=tiny_rn, method="gscorecam", device="cpu", topkk=3)


@pytest.fixture(scope="module")
def litemedsam_pipeline(tiny_rn):
    """The prompter (stub saliency concentrated on red) + LiteMedSAM (real weights), built from a config."""
    if "litemedsam" not in available("segmenter"):
        pytest.skip("litemedsam segmenter not available")
    from lvlm.pipeline import Pipeline

    prompter = SaliencyPrompter(
        clip=tiny_rn, method=redness, crf={"name": "torch", "max_pixels": 2048}, device="cpu"
    )
    return Pipeline.from_config(
        {"prompter": prompter, "segmenter": {"name": "litemedsam", "device": "cpu"}, "combine": "union"}
    )


def test_pipeline_with_litemedsam_returns_mask_at_input_resolution(litemedsam_pipeline):
    img, box = _scene(h=120, w=150, box=(45, 30, 110, 90))
    res = litemedsam_pipeline(img, "a red square")
    assert res.mask.shape == img.shape[:2] and res.mask.dtype == bool
    assert _iou(res.prompts.boxes[0], box) > 0.8
    truth = np.zeros(img.shape[:2], bool)
    truth[30:90, 45:110] = True
    assert (res.mask & truth).sum() / (res.mask | truth).sum() > 0.7
    assert "saliency" in res.extra and "crf" in res.extra


def test_tiny_config_runs_end_to_end(litemedsam_pipeline):
    from lvlm.pipeline import Pipeline, load_config

    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    assert cfg["segmenter"]["name"] == "litemedsam"
    # the same LiteMedSAM instance (its weights are what tiny.yaml names) keeps the test to one encoder pass
    pipe = Pipeline.from_config(cfg, segmenter=litemedsam_pipeline.segmenter)
    assert pipe.prompter.clip.name == "tiny-rn" and pipe.prompter.method.topk == 64
    img, _ = _scene(h=120, w=150, box=(45, 30, 110, 90))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random CLIP may find nothing: an empty mask is fine here
        res = pipe(img, "a red square")
    assert res.mask.shape == img.shape[:2]
    assert res.extra["saliency"].shape == img.shape[:2]


def test_packaged_gscorecam_configs_name_registered_components():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(files) >= 17
    import yaml

    seen = set()
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        p, s = dict(cfg["prompter"]), dict(cfg["segmenter"])
        assert p.pop("name") == "saliency" and cfg.get("combine", "union") == "union"
        check_kwargs(SaliencyPrompter, p, where=f.name)
        clip_name = p["clip"] if isinstance(p["clip"], str) else p["clip"]["name"]
        assert clip_name in available("clip"), (f.name, clip_name)
        seg = s.pop("name")
        assert seg in available("segmenter"), (f.name, seg)
        check_kwargs(get("segmenter", seg).obj, s, where=f.name)
        seen.add((clip_name, seg))
    for clip_name in (
        "OA-RN50",
        "OA-RN101",
        "OA-ViT-B",
        "OA-ViT-L",
        "CC-RN50",
        "LA-ViT-B",
        "BC-ViT-B",
        "BiomedCLIP",
    ):
        assert (clip_name, "medsam") in seen and (clip_name, "sam2") in seen


def test_peak_box_mode_picks_the_most_salient_region_not_the_largest():
    small, large = (10, 10, 50, 40), (90, 60, 150, 110)
    sal = np.maximum(_blob_saliency(120, 160, small, noise=0), 0.7 * _blob_saliency(120, 160, large, noise=0))
    mask = sal > 0.4
    assert _iou(pfs.boxes_from_mask(mask, "largest")[0][0], large) > 0.8
    boxes, _regions = pfs.boxes_from_mask(mask, "peak", saliency=sal)
    assert len(boxes) == 1 and _iou(boxes[0], small) > 0.8
    with pytest.raises(ValueError, match="saliency"):
        pfs.boxes_from_mask(mask, "peak")
