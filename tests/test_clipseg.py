"""CLIPSeg segmenter and decoder fine-tuning, on a tiny randomly initialised CLIPSeg (real HF classes)."""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch
import torch.nn.functional as F

from lvlm.errors import LvlmError, WeightsNotFoundError
from lvlm.pipeline import Pipeline
from lvlm.registry import build
from lvlm.segmenters.clipseg import DEFAULT_MODEL, save_tiny_clipseg
from lvlm.types import Prompts, Sample

PROMPT_MAP = {"square": ["segment square", "segment box"], "disk": ["segment disk", "segment circle"]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_clipseg(tmp_path_factory.mktemp("clipseg") / "tiny"))


def _shape_sample(i: int, rng: np.random.Generator, h: int, w: int) -> Sample:
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    cls = "square" if i % 2 == 0 else "disk"
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    r = int(rng.integers(min(h, w) // 8, min(h, w) // 4))
    yy, xx = np.mgrid[:h, :w]
    if cls == "square":
        mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        img[mask] = (230, 40, 40)
    else:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[mask] = (40, 220, 60)
    return Sample(id=f"s{i:02d}", image=img, prompt=PROMPT_MAP[cls][0], mask=mask, tags={"class": cls})


@pytest.fixture(scope="module")
def shapes():
    rng = np.random.default_rng(0)
    train = [_shape_sample(i, rng, 64, 64) for i in range(8)]
    sizes = [(48, 72), (80, 60), (64, 64), (37, 53)]
    val = [_shape_sample(100 + i, rng, h, w) for i, (h, w) in enumerate(sizes)]
    return train, val


SETTINGS = {
    "epochs": 3,
    "batch_size": 4,
    "lr": 1e-2,
    "image_size": 64,
    "prompt_map": PROMPT_MAP,
    "device": "cpu",
    "progress": False,
}


@pytest.fixture(scope="module")
def trained(tiny_dir, shapes, tmp_path_factory):
    from lvlm.train.clipseg import train_clipseg

    out = tmp_path_factory.mktemp("clipseg_run")
    summary = train_clipseg(
        shapes[0], shapes[1], out, seeds=[42], model=tiny_dir, **{**SETTINGS, "epochs": 12}
    )
    return out, summary


def test_segmenter_masks_at_source_resolution_match_hf_forward(tiny_dir):
    seg = build("segmenter", "clipseg", model=tiny_dir, device="cpu")
    assert seg.text_conditioned
    rng = np.random.default_rng(1)
    texts = ["segment crack", "a dog"]
    for h, w in [(37, 53), (64, 64), (120, 80)]:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        prob = seg.probabilities(img, texts)
        assert prob.shape == (2, h, w)
        # independent reference: the processor + CLIPSegForImageSegmentation.forward, upsampled
        inp = seg.processor(text=texts, images=[img, img], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = seg.model(**inp).logits
        ref = torch.sigmoid(
            F.interpolate(logits[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        )
        np.testing.assert_allclose(prob, ref.numpy(), atol=1e-5)
        cand = seg.segment(img, Prompts(text="segment crack"))
        assert cand.masks.shape == (1, h, w)
        np.testing.assert_array_equal(cand.masks[0], prob[0] > 0.5)
    res = Pipeline.from_config({"segmenter": {"name": "clipseg", "model": tiny_dir, "device": "cpu"}})(
        rng.integers(0, 255, (33, 47, 3), dtype=np.uint8), "segment crack"
    )
    assert res.mask.shape == (33, 47) and res.mask.dtype == bool
    with pytest.raises(LvlmError, match="text"):
        seg.segment(img, Prompts(boxes=[[0, 0, 5, 5]]))


def test_offline_model_fails_fast_naming_id_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("LVLM_OFFLINE", "1")
    t0 = time.perf_counter()
    try:
        Pipeline.from_config("clipseg/clipseg")
    except WeightsNotFoundError as exc:
        msg = str(exc)
        assert DEFAULT_MODEL in msg and f"https://huggingface.co/{DEFAULT_MODEL}" in msg
    else:  # the official model is in this machine's Hugging Face cache
        pytest.skip(f"{DEFAULT_MODEL} is cached locally")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(WeightsNotFoundError, match="not found"):
        build("segmenter", "clipseg", model=str(tmp_path / "missing" / "dir"))
    with pytest.raises(WeightsNotFoundError, match="decoder_checkpoint .*none.safetensors.*not found"):
        build(
            "segmenter", "clipseg", model="tiny-random", decoder_checkpoint=str(tmp_path / "none.safetensors")
        )


def test_boxes_points_and_refine(tiny_dir, tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    prob = build("segmenter", "clipseg", model=tiny_dir, device="cpu").probabilities(img, "segment crack")
    thr = float(np.median(prob))  # a random model's probabilities sit near 0.5: cut at the median
    seg = build("segmenter", "clipseg", model=tiny_dir, device="cpu", threshold=thr)
    full = prob > thr
    cand = seg.segment(img, Prompts(boxes=[[0, 0, 40, 30], [20, 10, 80, 60]], text="segment crack"))
    assert cand.masks.shape == (2, 60, 80)
    inside = np.zeros((60, 80), bool)
    inside[:30, :40] = True
    np.testing.assert_array_equal(cand.masks[0], full & inside)
    ys, xs = np.nonzero(full)
    pt = Prompts(points=[[xs[0], ys[0]]], text="segment crack")
    from scipy import ndimage

    labels = ndimage.label(full)[0]
    np.testing.assert_array_equal(seg.segment(img, pt).masks[0], labels == labels[ys[0], xs[0]])
    base = np.zeros((60, 80), bool)
    base[5:25, 5:25] = True
    base[40:55, 50:75] = True
    np.testing.assert_array_equal(seg.refine_mask(img, "segment crack", base, mode="intersect"), full & base)
    np.testing.assert_array_equal(seg.refine_mask(img, "segment crack", base, mode="union"), full | base)
    over = seg.refine_mask(img, "segment crack", base, mode="overlap")
    assert not (over & ~base).any()
    for sl in (np.s_[5:25, 5:25], np.s_[40:55, 50:75]):  # whole components, kept when half inside
        assert over[sl].all() == (full[sl].mean() >= 0.5) and (over[sl].all() or not over[sl].any())
    # as the last stage of a pipeline: the clipseg_refine combiner refines the pipeline's own mask
    other = str(save_tiny_clipseg(tmp_path / "tiny_seed1", seed=1))  # another model gives the base mask
    prob_other = build("segmenter", "clipseg", model=other, device="cpu").probabilities(img, "segment crack")
    inner = {
        "segmenter": {
            "name": "clipseg",
            "model": other,
            "device": "cpu",
            "threshold": float(np.median(prob_other)),
        }
    }
    base_mask = Pipeline.from_config(inner)(img, "segment crack").mask
    assert (base_mask & ~full).any() and (full & ~base_mask).any() and (full & base_mask).any()
    refine = {"name": "clipseg_refine", "model": tiny_dir, "device": "cpu", "threshold": thr}
    res = Pipeline.from_config({**inner, "combine": {**refine, "mode": "intersect"}})(img, "segment crack")
    np.testing.assert_array_equal(res.mask, full & base_mask)
    np.testing.assert_array_equal(res.extra["refine_base"], base_mask)
    res = Pipeline.from_config({**inner, "combine": {**refine, "mode": "overlap"}})(img, "segment crack")
    np.testing.assert_array_equal(res.mask, seg.refine_mask(img, "segment crack", base_mask, mode="overlap"))
    with pytest.raises(LvlmError, match="valid values"):
        Pipeline.from_config({**inner, "combine": {**refine, "mode": "both"}})


@contextlib.contextmanager
def _nowarn():
    """Silence EmptyMaskWarning (a random tiny model may find nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_encoder_frozen_decoder_trains(tiny_dir, shapes, tmp_path):
    from lvlm.train.clipseg import ClipSegTrainer

    tr = ClipSegTrainer(shapes[0], shapes[1], tmp_path, model=tiny_dir, seed=0, **SETTINGS)
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    assert all(not p.requires_grad for n, p in tr.net.named_parameters() if "clip" in n)
    assert all(p.requires_grad for n, p in tr.net.named_parameters() if n.startswith("decoder."))
    tr.train_epoch()
    after = tr.net.state_dict()
    enc = [k for k in before if k.startswith("clip.")]
    dec = [k for k in before if k.startswith("decoder.")]
    assert enc and dec
    assert all(torch.equal(before[k], after[k]) for k in enc)
    changed = [k for k in dec if not torch.equal(before[k], after[k])]
    assert len(changed) >= 0.9 * len(dec)


def test_training_loss_goes_down_and_outputs(trained, shapes):
    out, summary = trained
    run = out / "seed_42"
    import json

    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 12
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"]
    assert summary["val_miou"] > 0.2  # the decoder learnt the shapes (an empty or full mask scores < 0.1)
    assert summary["best_seed"] == 42
    assert summary["val_miou"] == pytest.approx(max(h["val_miou"] for h in hist), abs=1e-6)
    table = (run / "results.md").read_text()
    assert "| Class | mIoU | Dice | Samples |" in table
    assert "| Square |" in table and "| Disk |" in table and "| **Overall** |" in table and "| 4 |" in table
    assert (run / "results.csv").read_text().splitlines()[0] == "Class,mIoU,Dice,Samples"
    assert (run / "curves.png").stat().st_size > 1000 and (out / "curves.png").is_file()
    from lvlm.io import load_mask, mask_filename

    for s in shapes[1]:
        pred = load_mask(run / "predictions" / mask_filename(s.id, s.prompt))
        assert pred.shape == s.mask.shape
    from safetensors import safe_open

    with safe_open(str(run / "best_decoder.safetensors"), "pt") as f:
        assert all(not k.startswith("clip") for k in f.keys())  # noqa: SIM118
        assert f.metadata()["image_size"] == "64"


def test_saved_decoder_reloads_through_config_and_reproduces_val_iou(trained, shapes, tiny_dir):
    from lvlm.metrics import iou

    out, summary = trained
    cfg = {
        "segmenter": {
            "name": "clipseg",
            "model": tiny_dir,
            "device": "cpu",
            "decoder_checkpoint": str(out / "seed_42" / "best_decoder.safetensors"),
        }
    }
    pipe = Pipeline.from_config(cfg)
    ious = []
    with _nowarn():
        for s in shapes[1]:
            m = pipe(s.image, s.prompt).mask
            ious.append(iou(m, s.mask))
    assert np.mean(ious) == pytest.approx(summary["val_miou"], abs=1e-3)
    base = Pipeline.from_config({"segmenter": {"name": "clipseg", "model": tiny_dir, "device": "cpu"}})
    with _nowarn():
        assert any((base(s.image, s.prompt).mask != pipe(s.image, s.prompt).mask).any() for s in shapes[1])


def test_killed_run_resumes_to_the_same_state(tiny_dir, shapes, tmp_path):
    from lvlm.train.clipseg import LAST, ClipSegTrainer

    def run(out, kill_after=None, resume=False):
        tr = ClipSegTrainer(shapes[0], shapes[1], out, model=tiny_dir, seed=7, **SETTINGS)

        def hook(trainer, rec):
            if rec["epoch"] == kill_after:
                raise KeyboardInterrupt

        try:
            tr.fit(resume=resume, on_epoch_end=hook)
        except KeyboardInterrupt:
            return None
        return tr

    full = run(tmp_path / "a")
    assert run(tmp_path / "b", kill_after=1) is None
    assert torch.load(tmp_path / "b" / LAST, weights_only=True)["epoch"] == 1
    with pytest.raises(LvlmError, match="resume"):
        run(tmp_path / "b")
    resumed = run(tmp_path / "b", resume=True)
    a, b = full.net.decoder.state_dict(), resumed.net.decoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "time_s"} for h in resumed.history]
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_cli_trains_from_a_folder(tiny_dir, shapes, tmp_path):
    from lvlm.cli import main
    from lvlm.io import save_mask

    data = tmp_path / "data"
    from PIL import Image

    for s in shapes[0][:6]:
        (data / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.image).save(data / "images" / f"{s.id}.png")
        save_mask(data / "masks" / f"{s.id}.png", s.mask)
    out = tmp_path / "run"
    args = [
        "train",
        "clipseg",
        "--data",
        str(data),
        "--prompt",
        "segment square",
        "--model",
        tiny_dir,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "64",
        "--seeds",
        "3",
        "--num-workers",
        "0",
        "--out",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    assert (out / "seed_3" / "best_decoder.safetensors").is_file()
    assert (out / "summary.md").read_text().count("| 3 |") == 1
    assert len(list((out / "seed_3" / "predictions").glob("*_segment_square.png"))) == 1  # 20 % of 6
    assert main(args) == 1  # last.pt exists and neither --resume nor --overwrite
    assert main(["train", "clipseg", "--model", tiny_dir, "-q"]) == 1  # no data
