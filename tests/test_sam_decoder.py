"""SAM mask-decoder specialisation: batched decoding, training, early stopping, resume, reload, CLI,
prompts."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch

from lvlm.bench.prompt_strategies import evaluate_prompt_strategies, format_table
from lvlm.data.prompts import center_point, edge_point, grid_points, make_prompts, tight_box
from lvlm.errors import ConfigError, WeightsError, WeightsNotFoundError
from lvlm.models.sam import adapter_for, build_sam
from lvlm.segmenters.sam import SamFamilySegmenter
from lvlm.train.sam_decoder import (
    DecoderTrainConfig,
    evaluate_sam_decoder,
    load_decoder_checkpoint,
    read_decoder_metadata,
    save_decoder_checkpoint,
    split_samples,
    train_sam_decoder,
)
from lvlm.types import Candidates


@pytest.fixture(scope="module")
def tiny():
    """The small random SAM of lvlm.models.sam (256 px input, 16 x 16 embedding, 64-d decoder)."""
    return build_sam("vit_tiny", checkpoint=None, device="cpu")


def scene(i: int, h: int = 64, w: int = 80):
    """A dark noisy image with one bright disc: (image, mask)."""
    r = np.random.default_rng(i)
    img = r.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cx, cy, rad = r.integers(20, w - 20), r.integers(18, h - 18), r.integers(8, 16)
    m = (xx - cx) ** 2 + (yy - cy) ** 2 < rad**2
    img[m] = (220, 200, 40)
    return img, m


@pytest.fixture(scope="module")
def data():
    return [scene(i) for i in range(8)], [scene(100 + i) for i in range(4)]


FAST = {"batch_size": 4, "lr": 1e-3, "patience": 50, "seed": 0}


def test_batched_decode_equals_one_call_per_image(tiny):
    arch = adapter_for(tiny, device="cpu")
    imgs = [scene(i)[0] for i in range(3)]
    emb = arch.encode(imgs)
    pts = torch.tensor([[[10.0, 20.0]], [[100.0, 50.0]], [[200.0, 120.0]]])
    lbl = torch.ones(3, 1, dtype=torch.int64)
    boxes = torch.tensor([[5.0, 5, 60, 70], [30, 40, 200, 180], [0, 0, 255, 255]])
    with torch.no_grad():
        low, iou = arch.decode(emb, points=pts, labels=lbl)
        lowb, _ = arch.decode(emb, boxes=boxes)
        for i in range(3):
            one, one_iou = arch.decode(emb[i : i + 1], points=pts[i : i + 1], labels=lbl[i : i + 1])
            torch.testing.assert_close(low[i], one[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(iou[i], one_iou[0], rtol=1e-5, atol=1e-5)
            oneb, _ = arch.decode(emb[i : i + 1], boxes=boxes[i : i + 1])
            torch.testing.assert_close(lowb[i], oneb[0], rtol=1e-5, atol=1e-5)


def test_evaluation_twin_matches_the_sam_segmenter(tiny):
    """Same preprocessing, prompt scaling and postprocessing as the registered `sam` segmenter."""
    from lvlm.registry import build

    seg = build("segmenter", "sam", model_type="vit_tiny", checkpoint=None, multimask=False, device="cpu")
    twin = SamFamilySegmenter(adapter_for(tiny, device="cpu"))
    img, m = scene(3, 70, 90)
    for strategy in ("center", "grid4", "box"):
        prompts = make_prompts(m, strategy)
        a, b = seg.segment(img, prompts), twin.segment(img, prompts)
        assert a.masks.shape == b.masks.shape == (1, 70, 90)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def _count_encoder_calls(model):
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    return calls, handle


@pytest.fixture(scope="module")
def trained(tiny, data, tmp_path_factory):
    """One short training run shared by the tests below."""
    tmp = tmp_path_factory.mktemp("sd")
    model = copy.deepcopy(tiny)
    calls, handle = _count_encoder_calls(model)
    res = train_sam_decoder(
        model,
        data[0],
        data[1],
        out_dir=tmp / "run",
        config={**FAST, "epochs": 6},
        cache_dir=tmp / "cache",
        device="cpu",
        model_name="vit_tiny",
        progress=False,
    )
    handle.remove()
    return res, tmp, sum(calls)


def test_training_loss_goes_down_and_images_are_encoded_once(trained, data, tiny):
    res, tmp, n_encoded = trained
    losses = [r["train_loss"] for r in res.history[1:]]
    assert len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses
    # 8 training images + their 8 flips + 4 validation images, each through the encoder exactly once
    assert n_encoded == 20
    assert res.n_train == 16 and res.n_val == 4
    files = list((tmp / "cache").rglob("*.npy"))
    assert len(files) == 20
    # a second run on the same cache never runs the encoder
    model = copy.deepcopy(tiny)
    calls, handle = _count_encoder_calls(model)
    train_sam_decoder(
        model,
        data[0],
        data[1],
        out_dir=tmp / "run2",
        config={**FAST, "epochs": 1},
        cache_dir=tmp / "cache",
        device="cpu",
        progress=False,
    )
    handle.remove()
    assert calls == []


def test_saved_decoder_reloads_and_reproduces_validation_iou(trained, tiny, data):
    res, tmp, _ = trained
    meta = read_decoder_metadata(res.decoder_path)
    assert meta["format"] == "lvlm.sam_decoder/1" and meta["model"] == "vit_tiny"
    assert meta["epoch"] == res.best_epoch and meta["multimask_output"] is False
    fresh = copy.deepcopy(tiny)  # the base weights: its decoder differs from the trained one
    base = evaluate_sam_decoder(fresh, data[1], cache_dir=tmp / "cache", device="cpu")
    assert base["iou"] == pytest.approx(res.base_val_iou, abs=1e-6)
    load_decoder_checkpoint(fresh, res.decoder_path)
    again = evaluate_sam_decoder(fresh, data[1], cache_dir=tmp / "cache", device="cpu")
    assert again["iou"] == pytest.approx(res.best_val_iou, abs=1e-6)
    best = res.history[res.best_epoch]
    assert again["iou_point"] == pytest.approx(best["val_iou_point"], abs=1e-6)
    assert again["iou_box"] == pytest.approx(best["val_iou_box"], abs=1e-6)
    # the history on disk is the returned one
    assert json.loads((res.out_dir / "history.json").read_text())[-1]["epoch"] == len(res.history) - 1
    if importlib.util.find_spec("matplotlib"):
        assert (res.out_dir / "curves.png").stat().st_size > 1000


def test_early_stopping_on_a_flat_validation_curve(tiny, data, tmp_path):
    model = copy.deepcopy(tiny)
    before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    res = train_sam_decoder(
        model,
        data[0][:4],
        data[1][:2],
        out_dir=tmp_path / "run",
        config={**FAST, "lr": 0.0, "epochs": 20, "patience": 2, "hflip": False},
        cache_dir=tmp_path / "cache",
        device="cpu",
        progress=False,
    )
    assert res.stopped_early
    assert [r["epoch"] for r in res.history] == [0, 1, 2]  # base + patience epochs without a gain
    assert res.best_epoch == 0 and not res.improved
    assert len({round(r["val_iou"], 9) for r in res.history}) == 1
    # the written decoder is the base decoder (training never beat it)
    fresh = copy.deepcopy(tiny)
    for v in fresh.mask_decoder.parameters():
        v.data.zero_()
    load_decoder_checkpoint(fresh, res.decoder_path)
    for k, v in fresh.mask_decoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny, data, tmp_path):
    cfg = {**FAST, "epochs": 4, "hflip": False}
    train, val = data[0][:4], data[1][:2]
    full = train_sam_decoder(
        copy.deepcopy(tiny),
        train,
        val,
        out_dir=tmp_path / "full",
        config=cfg,
        cache_dir=tmp_path / "cache",
        device="cpu",
        progress=False,
    )

    def kill_after_2(rec):
        if rec["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_sam_decoder(
            copy.deepcopy(tiny),
            train,
            val,
            out_dir=tmp_path / "cut",
            config=cfg,
            cache_dir=tmp_path / "cache",
            device="cpu",
            progress=False,
            on_epoch_end=kill_after_2,
        )
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert state["epoch"] == 2
    seen = []
    resumed = train_sam_decoder(
        copy.deepcopy(tiny),
        train,
        val,
        out_dir=tmp_path / "cut",
        config=cfg,
        cache_dir=tmp_path / "cache",
        device="cpu",
        resume=True,
        progress=False,
        on_epoch_end=lambda r: seen.append(r["epoch"]),
    )
    assert seen == [3, 4]  # only the missing epochs ran
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3, 4]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    for k in a["decoder"]:
        torch.testing.assert_close(a["decoder"][k], b["decoder"][k])
    assert [r["train_loss"] for r in full.history[1:]] == pytest.approx(
        [r["train_loss"] for r in resumed.history[1:]]
    )


def test_decoder_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_decoder_checkpoint(copy.deepcopy(tiny), tmp_path / "nope.safetensors")
    path = save_decoder_checkpoint(tiny, tmp_path / "d.safetensors", {"model": "vit_tiny"})
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    other = copy.deepcopy(tiny)
    other.mask_decoder = MaskDecoder(
        transformer_dim=32,
        transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
    )
    with pytest.raises(WeightsError, match="decoder_checkpoint .*wrong shape.*trained for vit_tiny"):
        load_decoder_checkpoint(other, path)
    with pytest.raises(ConfigError, match="not a SAM-architecture model"):
        load_decoder_checkpoint(torch.nn.Linear(2, 2), path)


def test_config_and_split(data):
    with pytest.raises(ConfigError, match="unknown key"):
        DecoderTrainConfig.from_any({"epoch": 3})
    with pytest.raises(ConfigError, match="point_fraction"):
        DecoderTrainConfig.from_any({"point_fraction": 2})
    img, m = scene(0)
    # 3 objects on image A, 2 on image B, 1 on image C: objects of an image stay together
    samples = [(img, m)] * 3 + [(scene(1)[0], scene(1)[1])] * 2 + [scene(2)]
    train, val = split_samples(samples, 0.34, seed=0)

    def keys(ss):
        return {id(s[0]) for s in ss}

    assert not keys(train) & keys(val)
    assert len(train) + len(val) == 6 and val
    train, val = split_samples(samples, 0.5, seed=0, split_by="item")
    assert len(val) == 3


def test_cli_trains_on_synthetic_defects(tmp_path):
    from PIL import Image

    from lvlm.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(40, 220, (96, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "sam-decoder",
            "--model",
            "sam",
            "--model-type",
            "vit_tiny",
            "--checkpoint",
            "random",
            "--dataset",
            "defects",
            "--data-root",
            str(folder),
            "--data-arg",
            "n=6",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    assert (out / "decoder.safetensors").is_file() and (out / "last.pt").is_file()
    assert read_decoder_metadata(out / "decoder.safetensors")["model"] == "vit_tiny"
    assert main(["train", "sam-decoder", "--dataset", "defects", "--data-arg", "n", "--out", str(out)]) == 1


# ------------------------------------------------------------------------------------- prompt strategies
def ring(h=60, w=60):
    yy, xx = np.mgrid[:h, :w]
    d2 = (xx - 30) ** 2 + (yy - 28) ** 2
    return (d2 < 20**2) & (d2 >= 12**2)


def test_prompt_points_lie_inside_the_mask():
    m = ring()
    c = center_point(m)
    assert c.shape == (1, 2) and m[int(c[0, 1]), int(c[0, 0])]  # the hole's centre is snapped onto the ring
    assert np.hypot(c[0, 0] - 30, c[0, 1] - 28) == pytest.approx(12, abs=1.01)
    e = edge_point(m)
    ys = np.nonzero(m)[0]
    assert e[0, 1] == ys.min() and m[int(e[0, 1]), int(e[0, 0])]
    g = grid_points(m)
    assert g.shape == (4, 2) and all(m[int(y), int(x)] for x, y in g)
    np.testing.assert_array_equal(tight_box(m), [11, 9, 50, 48])
    p = make_prompts(np.stack([m, m]), "grid4")
    assert p.points.shape == (2, 4, 2) and p.point_labels.tolist() == [[1] * 4] * 2
    with pytest.raises(ValueError, match="empty"):
        center_point(np.zeros((5, 5), bool))


class Oracle:
    """Returns the ground truth (or nothing): a segmenter with known scores."""

    def __init__(self, masks, empty=False):
        self.masks, self.empty = masks, empty

    def segment(self, image, prompts):
        return Candidates(np.zeros_like(self.masks) if self.empty else self.masks)


def test_strategy_table_scores_a_perfect_and_an_empty_segmenter():
    masks = np.stack([ring(), np.roll(ring(), 5, axis=1)])
    img = np.zeros((60, 60, 3), np.uint8)
    rows, per_item = evaluate_prompt_strategies(
        {"perfect": Oracle(masks), "none": Oracle(masks, True)}, [(img, masks)]
    )
    assert len(rows) == 8 and len(per_item) == 16
    for r in rows:
        want = 1.0 if r["model"] == "perfect" else 0.0
        for m in ("iou", "dice", "boundary_precision", "boundary_recall", "boundary_f1"):
            assert r[f"{m}_mean"] == want and r[f"{m}_std"] == 0.0
        assert r["num_samples"] == 2
    assert "Center-of-Mass (Single)" in format_table(rows)
