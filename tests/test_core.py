"""Registry, configs and the pipeline's data flow, with small stub components."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from lvlm import Pipeline, registry
from lvlm.components import MaskGenerator, PromptedSegmenter, Prompter, Selector
from lvlm.errors import ConfigError, ImageError, PromptError, UnknownComponentError, WeightsNotFoundError
from lvlm.types import Candidates, Prompts, Selection, masks_to_boxes
from lvlm.weights import WeightSpec, resolve


class _Halves(MaskGenerator):
    """Two candidates: the left and the right half of the image."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.calls = 0

    def generate(self, image):
        self.calls += 1
        h, w = image.shape[:2]
        m = np.zeros((2, h, w), bool)
        m[0, :, : w // 2] = True
        m[1, :, w // 2 :] = True
        return Candidates(m, scores=[0.9, 0.8], source="halves")


class _Reddest(Selector):
    """Picks the candidate with the highest mean red value for the prompt 'red', else the other."""

    def select(self, image, text, candidates):
        red = np.array([image[m, 0].mean() for m in candidates.masks])
        scores = red if text == "red" else -red
        i = int(np.argmax(scores))
        return Selection(candidates.masks[i], float(scores[i]), i, scores)


class _BoxFill(PromptedSegmenter):
    """Fills each box; counts encoder passes."""

    def __init__(self):
        self.embeds = 0

    def _embed(self, image):
        self.embeds += 1
        return image.shape[:2]

    def _decode(self, emb, prompts, image):
        h, w = emb
        masks = np.zeros((len(prompts), h, w), bool)
        for k, (x0, y0, x1, y1) in enumerate(prompts.boxes.round().astype(int)):
            masks[k, y0:y1, x0:x1] = True
        return Candidates(masks, source="boxfill")


class _FindsNothing(Prompter):
    """A prompter for which no text matches anything (as a saliency map with no region above threshold)."""

    def prompts(self, image, text):
        return Prompts(), {}


registry.register("generator", "_test_halves")(_Halves)
registry.register("prompter", "_test_nothing")(_FindsNothing)
registry.register("selector", "_test_reddest")(_Reddest)
registry.register("segmenter", "_test_boxfill")(_BoxFill)


def _img(h=30, w=40):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2 :, 0] = 200  # right half is red
    return img


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownComponentError) as e:
        registry.build("generator", "sam_xxl")
    assert "_test_halves" in str(e.value) and "valid generator names" in str(e.value)
    with pytest.raises(UnknownComponentError, match="valid kinds"):
        registry.available("gadget")


def test_wrong_config_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError) as e:
        Pipeline.from_config({"generator": {"name": "_test_halves", "scael": 2}, "selector": "_test_reddest"})
    msg = str(e.value)
    assert "'scael'" in msg and "scale" in msg
    with pytest.raises(ConfigError, match="'generater'"):
        Pipeline.from_config({"generater": "_test_halves", "selector": "_test_reddest"})
    with pytest.raises(ConfigError, match="no 'name'"):
        Pipeline.from_config({"generator": {"scale": 2}, "selector": "_test_reddest"})
    with pytest.raises(ConfigError, match="selector"):
        Pipeline.from_config({"generator": "_test_halves"})


def test_yaml_config_is_safe_loaded(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("generator: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Pipeline.from_config(p)
    p.write_text("generator: {name: _test_halves}\nselector: {name: _test_reddest}\n")
    assert Pipeline.from_config(p).generator is not None


def test_pipeline_flow_and_result(tmp_path):
    pipe = Pipeline.from_config({"generator": "_test_halves", "selector": "_test_reddest"})
    img = _img(31, 47)
    res = pipe(img, "red")
    assert res.mask.shape == (31, 47) and res.mask.dtype == bool
    assert res.index == 1 and res.mask[:, -1].all() and not res.mask[:, 0].any()
    assert len(res.candidates) == 2 and res.scores.shape == (2,)
    assert {"load", "generator", "selector", "total"} <= set(res.timings)
    # path input gives the same answer
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "x.png")
    np.testing.assert_array_equal(pipe(tmp_path / "x.png", "red").mask, res.mask)


def test_prompted_pipeline_reuses_the_embedding_and_unions_boxes():
    pipe = Pipeline.from_config({"segmenter": "_test_boxfill"})
    img = _img()
    res = pipe(img, box=[[0, 0, 5, 5], [10, 10, 20, 20]])
    assert res.mask.sum() == 25 + 100
    pipe(img, box=[1, 1, 4, 4])
    assert pipe.segmenter.embeds == 1  # the image embedding is computed once
    with pytest.raises(PromptError, match="outside"):
        pipe(img, box=[100, 100, 120, 130])
    with pytest.raises(PromptError, match="empty"):
        pipe(img, box=[10, 10, 5, 20])
    # a box partly outside is clipped to the image
    assert pipe(img, box=[-10, -10, 5, 5]).mask.sum() == 25


def test_empty_mask_warns():
    pipe = Pipeline.from_config({"generator": "_test_halves", "selector": "_test_reddest"})
    img = np.zeros((4, 1, 3), np.uint8)  # w // 2 == 0: the left half is empty, selected for non-red
    with pytest.warns(UserWarning, match="matched nothing"):
        res = pipe(img, "blue")
    assert not res.mask.any() and res.mask.shape == (4, 1)


def test_run_many_keeps_going(tmp_path):
    pipe = Pipeline.from_config({"generator": "_test_halves", "selector": "_test_reddest"})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    out = pipe.run_many([_img(), bad, _img(10, 10)], "red", progress=False, on_error="keep")
    assert out[0].mask.any() and isinstance(out[1], ImageError) and out[2].mask.shape == (10, 10)
    with pytest.raises(ImageError):
        pipe.run_many([bad], "red", progress=False)


def test_masks_to_boxes_and_prompts():
    m = np.zeros((3, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    m[1, 9, 11] = True
    np.testing.assert_array_equal(masks_to_boxes(m), [[3, 2, 9, 5], [11, 9, 12, 10], [0, 0, 0, 0]])
    p = Prompts(points=[[1, 2], [3, 4]])
    assert p.points.shape == (1, 2, 2) and len(p) == 1 and p.point_labels.tolist() == [[1, 1]]
    with pytest.raises(ValueError):
        Prompts(boxes=np.zeros((2, 4)), points=np.zeros((3, 1, 2)))


def test_missing_weights_fail_fast_with_file_dir_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("LVLM_HOME", str(tmp_path))
    monkeypatch.delenv("LVLM_OFFLINE", raising=False)
    spec = WeightSpec(
        "sam_vit_b_01ec64.pth", url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            resolve(spec)
            pytest.skip("the network is reachable here")
        except WeightsNotFoundError as exc:
            msg = str(exc)
    assert time.perf_counter() - t0 < 5
    assert "sam_vit_b_01ec64.pth" in msg and str(tmp_path) in msg and "dl.fbaipublicfiles.com" in msg
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve(spec, path=tmp_path / "nope.pth")
    (tmp_path / spec.filename).write_bytes(b"x")
    assert resolve(spec) == tmp_path / spec.filename


def test_prompter_that_finds_nothing_gives_an_empty_mask_and_a_warning():
    from lvlm.pipeline import EmptyMaskWarning

    pipe = Pipeline.from_config({"prompter": "_test_nothing", "segmenter": "_test_boxfill"})
    with pytest.warns(EmptyMaskWarning, match="matched nothing"):
        res = pipe(_img(), "a unicorn")
    assert res.mask.shape == (30, 40) and not res.mask.any()
    assert len(res.candidates) == 0 and pipe.segmenter.embeds == 0  # the segmenter is not run for no prompt


def test_slugs_transliterate_and_never_collide():
    from lvlm.io import mask_filename, slug, text_hash, unique_slugs

    assert slug("étoile") == "etoile" and slug("Crème Brûlée!") == "creme_brulee"
    assert slug("Segment the Crack!") == "segment_the_crack"
    star = slug("星")
    assert star and star.isascii() and text_hash("星") in star and star != slug("月")
    assert slug("ß") != slug("ss") and slug("étoile ★") == "etoile"  # a symbol is punctuation, not a letter
    long_a, long_b = "a" * 90 + "x", "a" * 90 + "y"
    assert len(slug(long_a)) <= 80 and slug(long_a) != slug(long_b)
    assert text_hash("星") == __import__("hashlib").sha1("星".encode()).hexdigest()[:6]
    names = unique_slugs(["Crack", "crack!", "dog", "Crack", "星", "月"])
    assert len(names) == 5 and len(set(names.values())) == 5 and names["dog"] == "dog"
    assert (
        names["Crack"].startswith("crack_") and names["Crack"] == unique_slugs(["Crack", "crack!"])["Crack"]
    )
    assert mask_filename("img", "étoile") == "img_etoile.png"
    assert mask_filename("img", "Crack", names["Crack"]) != mask_filename("img", "crack!", names["crack!"])
