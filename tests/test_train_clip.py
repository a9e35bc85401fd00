"""The domain CLIP trainer on a tiny generated set: it learns, reloads exactly, and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from lvlm.data.synthetic import all_captions, make_scene, training_pairs
from lvlm.registry import build
from lvlm.train.clip import ClipTrainConfig, PairSource, report_text, train_clip

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.json"
    p.write_text(json.dumps(TINY))
    return str(p)


def _cfg(tiny_cfg, out, **kw):
    base = {
        "data": "scenes:96",
        "out": str(out),
        "model_config": tiny_cfg,
        "train": "both",
        "epochs": 3,
        "batch_size": 32,
        "lr": 3e-3,
        "seed": 0,
        "device": "cpu",
        "val_fraction": 0.25,
    }
    base.update(kw)
    return ClipTrainConfig(**base)


def test_loss_goes_down_and_checkpoint_reloads(tiny_cfg, tmp_path):
    final = train_clip(_cfg(tiny_cfg, tmp_path / "run"), progress=False)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]  # training loss falls
    assert final["final_val_loss"] < final["first_val_loss"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    # the best checkpoint is an open_clip local-dir model the CLIP presets load by path
    best = tmp_path / "run" / "best"
    clip = build("clip", "open_clip", checkpoint=str(best / "open_clip_model.safetensors"), device="cpu")
    import open_clip

    ref = open_clip.create_model("local-dir:" + str(best))
    ref.eval()
    img = make_scene(3, size=64).image
    x = clip.preprocess([img])
    with torch.no_grad():
        ours = clip.encode_image(x)
        theirs = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
        t_ours = clip.encode_text(["a red circle"])
        t_ref = torch.nn.functional.normalize(
            ref.encode_text(open_clip.get_tokenizer("RN50", context_length=8)(["a red circle"])), dim=-1
        )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t_ours, t_ref, atol=1e-5, rtol=1e-4)


def test_interrupted_run_resumes_to_the_same_weights(tiny_cfg, tmp_path):
    from safetensors.torch import load_file

    train_clip(_cfg(tiny_cfg, tmp_path / "full", epochs=2), progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2
        train_clip(_cfg(tiny_cfg, tmp_path / "cut", epochs=2), progress=False, stop_after_steps=5)
    train_clip(_cfg(tiny_cfg, tmp_path / "cut", epochs=2), progress=False)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    h = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["epoch"] for r in h] == [0, 1, 2]  # no epoch lost or repeated
    assert load_file(str(tmp_path / "cut" / "best" / "open_clip_model.safetensors"))


def test_table_ii_settings_freeze_the_right_parts(tiny_cfg):
    import open_clip

    from lvlm.train.clip import set_trainable

    m = open_clip.CLIP(**TINY)
    heads = set_trainable(m, "heads")
    assert heads and all(not n.startswith("transformer.") for n in heads)
    assert "text_projection" in heads and not any(n.startswith("visual.layer1") for n in heads)
    image = set_trainable(m, "image")
    assert any(n.startswith("visual.layer1") for n in image) and not any(
        n.startswith("transformer.") for n in image
    )
    both = set_trainable(m, "both")
    assert len(both) == len(list(m.parameters()))


def test_manifest_and_report_parsing(tmp_path):
    from PIL import Image

    from lvlm.train.clip import load_pairs

    for i in range(3):
        Image.fromarray(make_scene(i, size=32).image).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text(
        "image,text\n0.png,a red circle\n1.png,a blue star\n2.png,a green cross\n"
    )
    pairs = load_pairs(str(tmp_path / "m.csv"))
    assert len(pairs) == 3 and pairs.texts[1] == "a blue star"
    rep = "EXAMINATION: CHEST\nFINDINGS: Lungs are clear.\n  No effusion.\nIMPRESSION: No acute process.\n"
    assert report_text(rep) == "Lungs are clear. No effusion. No acute process."
    # a MIMIC-CXR-JPG tree
    study = tmp_path / "mimic" / "files" / "p10" / "p10000032" / "s50414267"
    study.mkdir(parents=True)
    Image.fromarray(make_scene(5, size=32).image).save(study / "img1.jpg")
    (study.parent / "s50414267.txt").write_text(rep)
    mp = load_pairs(str(tmp_path / "mimic"))
    assert len(mp) == 1 and mp.texts[0].startswith("Lungs are clear")


def test_scene_generator_is_deterministic_and_masks_are_true():
    a, b = make_scene(11), make_scene(11)
    np.testing.assert_array_equal(a.image, b.image)
    assert len({o.caption for o in a.objects}) == len(a.objects)
    for o in a.objects:
        assert o.mask.sum() > 30
        # the mask covers exactly the painted pixels: its border pixels differ from the background just
        # outside
        assert a.find(o.caption) is o
    masks = np.stack([o.mask for o in a.objects])
    assert masks.sum(0).max() == 1  # objects never overlap
    pairs = list(training_pairs(range(4)))
    assert all(cap.split()[-1] in ("circle", "square", "triangle", "star", "cross") for _, cap, _ in pairs)
    assert all(0 <= lab < len(all_captions()) for _, _, lab in pairs)
    assert not np.array_equal(make_scene(12).image, a.image)


def test_pair_source_split_is_seeded():
    ps = PairSource(list(range(20)), [str(i) for i in range(20)])
    tr1, va1 = ps.split(0.2, seed=3)
    _, va2 = ps.split(0.2, seed=3)
    assert va1.images == va2.images and len(va1) == 4 and not set(va1.images) & set(tr1.images)


def test_dihedral_augmentation_only_turns_and_flips_images():
    """`--augment dihedral` shows each training image as one of the 8 symmetries of the square, nothing
    else."""
    from lvlm.train.clip import _Batches

    imgs = [make_scene(s, size=32, n_objects=1).image for s in range(16)]
    pairs = PairSource(imgs, ["x"] * 16)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain = _Batches(pairs, 32, mean, std, lambda t: t, augment="none").images(range(16))
    aug = _Batches(pairs, 32, mean, std, lambda t: t, augment="dihedral").images(
        range(16), np.random.default_rng(0)
    )
    seen = set()
    for p, a in zip(plain, aug):
        hits = [
            (k, f)
            for k in range(4)
            for f in (0, 1)
            if torch.equal(torch.rot90(p.flip(-1) if f else p, k, (1, 2)), a)
        ]
        assert hits, "an augmented image is not a turn / flip of its original"
        seen.add(hits[0])
    assert len(seen) > 3  # the turns are random, not one fixed symmetry


def test_unknown_augmentation_is_named(tiny_cfg, tmp_path):
    from lvlm.errors import ConfigError

    with pytest.raises(ConfigError, match="dihedral"):
        train_clip(_cfg(tiny_cfg, tmp_path / "run", augment="rotate"), progress=False)
    with pytest.raises(ConfigError, match="probability"):
        train_clip(_cfg(tiny_cfg, tmp_path / "run2", scene_black_prob=1.5), progress=False)


def test_train_loop_core_early_stopping_resume_and_settings(tmp_path):
    from lvlm.errors import ConfigError
    from lvlm.train.loop import TrainLoop

    scores = {1: 0.5, 2: 0.7, 3: 0.7005, 4: 0.69, 5: 0.9}  # epoch 3 gains less than min_delta

    def make(settings=None, state=None):
        state = state if state is not None else {"w": 0}
        bests = []
        loop = TrainLoop(
            tmp_path,
            10,
            lambda: {"w": state["w"]},
            lambda s: state.update(w=s["w"]),
            score="val",
            min_delta=1e-3,
            patience=2,
            settings=settings or {"lr": 1},
            on_best=lambda e, r: bests.append(e),
        )
        return loop, state, bests

    def epoch(state):
        def run(e):
            state["w"] += 1
            return {"val": scores[e]}

        return run

    loop, state, bests = make()

    def kill_after_2(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run(epoch(state), kill_after_2)
    assert bests == [1, 2]
    again, state2, bests2 = make(state={"w": -1})
    assert again.resume() and state2["w"] == 2 and again.epoch == 2 and again.best_epoch == 2
    hist = again.run(epoch(state2))
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]  # stopped after 2 epochs without a gain
    assert again.stopped_early and again.best == pytest.approx(0.7) and bests2 == []
    assert json.loads((tmp_path / "history.json").read_text()) == hist
    with pytest.raises(ConfigError, match="lr: 1 in the checkpoint, 2 now"):
        make(settings={"lr": 2})[0].resume()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "last.pt"]  # no temporary files
