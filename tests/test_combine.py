"""The combine stage: one registered mechanism (best, union, merge, instances) at the end of every
pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lvlm import Pipeline, registry
from lvlm.combiners import Combiner
from lvlm.components import MaskGenerator, PromptedSegmenter, Prompter, Selector
from lvlm.errors import ConfigError, LvlmError, PromptError, UnknownComponentError
from lvlm.types import Candidates, Instances, Prompts, Selection


def _squares(h=32, w=48):
    """Three candidates: two disjoint squares and one covering both halves of the first."""
    m = np.zeros((3, h, w), bool)
    m[0, 2:12, 2:12] = True
    m[1, 16:28, 30:44] = True
    m[2, 2:12, 2:22] = True
    return m


class _Three(MaskGenerator):
    def generate(self, image):
        h, w = image.shape[:2]
        return Candidates(_squares(h, w), scores=[0.5, 0.9, 0.7], source="three")


class _PrefersFirst(Selector):
    """Scores 3, 2.99, 1 (a near tie between two disjoint squares)."""

    def select(self, image, text, candidates):
        scores = np.array([3.0, 2.99, 1.0][: len(candidates)], np.float32)
        return Selection(candidates.masks[0], 3.0, 0, scores)


class _BoxFill(PromptedSegmenter):
    def _embed(self, image):
        return image.shape[:2]

    def _decode(self, emb, prompts, image):
        h, w = emb
        masks = np.zeros((len(prompts), h, w), bool)
        for k, (x0, y0, x1, y1) in enumerate(prompts.boxes.round().astype(int)):
            masks[k, y0:y1, x0:x1] = True
        return Candidates(masks, scores=np.linspace(0.9, 0.5, len(prompts)), source="boxfill")


class _TwoBoxes(Prompter):
    """Two boxes for any text; counts calls, and batched calls when ``batched``."""

    def __init__(self):
        self.calls = 0

    def prompts(self, image, text):
        self.calls += 1
        return Prompts(boxes=[[1, 1, 6, 6], [10, 10, 20, 18]]), {"from": "single"}


class _BatchedTwoBoxes(_TwoBoxes):
    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def prompts_many(self, images, texts):
        self.batches.append(len(images))
        if any(t == "fail" for t in texts):
            raise PromptError("this batch fails")
        return [(Prompts(boxes=[[1, 1, 6, 6], [10, 10, 20, 18]]), {"from": "batch"}) for _ in images]


registry.register("generator", "_combine_three")(_Three)
registry.register("selector", "_combine_first")(_PrefersFirst)


def _img(h=32, w=48):
    return np.full((h, w, 3), 40, np.uint8)


def test_registered_names_string_and_dict_specs_and_unknown_names():
    assert {"best", "union", "merge", "instances", "clipseg_refine"} <= set(registry.available("combine"))
    base = {"generator": "_combine_three", "selector": "_combine_first"}
    assert type(Pipeline.from_config({**base, "combine": "union"}).combiner).__name__ == "UnionCombiner"
    p = Pipeline.from_config({**base, "combine": {"name": "merge", "margin": 0.05}})
    assert p.combiner.margin == 0.05
    with pytest.raises(UnknownComponentError, match="valid combine names: .*best.*instances.*merge.*union"):
        Pipeline.from_config({**base, "combine": "unoin"})
    with pytest.raises(ConfigError, match="valid keys: margin, max_overlap, max_masks"):
        Pipeline.from_config({**base, "combine": {"name": "merge", "margn": 0.05}})
    with pytest.raises(ConfigError, match="not a combiner"):
        Pipeline(generator=_Three(), selector=_PrefersFirst(), combine=object())


def test_default_is_the_selectors_choice_or_the_union():
    img = _img()
    res = Pipeline(generator=_Three(), selector=_PrefersFirst())(img, "x")
    m = _squares()
    assert res.index == 0 and np.array_equal(res.mask, m[0]) and res.score == 3.0
    assert len(res.instances) == 1 and res.instances.labels == ["x"] and res.instances.scores[0] == 3.0
    np.testing.assert_allclose(res.scores, [3.0, 2.99, 1.0])
    seg = Pipeline(prompter=_TwoBoxes(), segmenter=_BoxFill())
    res = seg(img, "x")
    expect = np.zeros((32, 48), bool)
    expect[1:6, 1:6] = expect[10:18, 10:20] = True
    assert np.array_equal(res.mask, expect) and res.index == [0, 1] and len(res.instances) == 2


def test_best_without_selector_is_the_highest_candidate_score():
    res = Pipeline(prompter=_TwoBoxes(), segmenter=_BoxFill(), combine="best")(_img(), "x")
    assert res.index == 0 and res.score == pytest.approx(0.9) and res.mask.sum() == 25
    assert np.array_equal(res.instances.boxes[0], [1, 1, 6, 6])


def test_merge_unites_near_ties_that_add_area_on_the_selectors_scores():
    m = _squares()
    res = Pipeline(generator=_Three(), selector=_PrefersFirst(), combine={"name": "merge", "margin": 0.05})(
        _img(), "x"
    )
    assert res.index == [0, 1] and np.array_equal(
        res.mask, m[0] | m[1]
    )  # 2 overlaps 0 by all of 0: not added
    assert res.instances.scores.tolist() == pytest.approx([3.0, 2.99])
    res = Pipeline(generator=_Three(), selector=_PrefersFirst(), combine={"name": "merge", "margin": 0.001})(
        _img(), "x"
    )
    assert res.index == [0]
    # without a selector: on the candidates' own scores (0.5, 0.9, 0.7) -> 1 first, then 2 (disjoint from 1)
    res = Pipeline(prompter=_TwoBoxes(), segmenter=_BoxFill(), combine={"name": "merge", "margin": 0.5})(
        _img(), "x"
    )
    assert res.index == [0, 1]


def test_a_custom_combiner_is_the_one_path():
    class _Nothing(Combiner):
        def combine(self, image, text, candidates, selection=None):
            h, w = candidates.shape
            return Selection(
                np.zeros((h, w), bool), -1.0, None, None, {"saw": len(candidates)}, Instances.empty(h, w)
            )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = Pipeline(generator=_Three(), selector=_PrefersFirst(), combine=_Nothing())(_img(), "x")
    assert res.empty and res.score == -1.0 and res.extra["saw"] == 3 and len(res.instances) == 0
    assert any("matched nothing" in str(w.message) for w in caught)


def test_generator_without_selector_needs_combine_instances():
    with pytest.raises(ConfigError, match="selector.*combine: instances"):
        Pipeline(generator=_Three())
    with pytest.raises(ConfigError, match="selector"):
        Pipeline(generator=_Three(), combine="union")
    pipe = Pipeline(generator=_Three(), combine="instances")
    assert pipe.takes_no_prompt and not pipe.needs_text
    res = pipe(_img())
    assert res.prompt is None and len(res.instances) == 3 and res.index == [1, 2, 0]  # best first
    np.testing.assert_array_equal(res.mask, _squares().any(0))
    with pytest.raises(LvlmError, match="give a text prompt"):
        Pipeline(generator=_Three(), selector=_PrefersFirst())(_img())


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_text_prompt_is_refused(blank):
    with pytest.raises(PromptError, match="empty"):
        Pipeline(generator=_Three(), selector=_PrefersFirst())(_img(), blank)
    with pytest.raises(PromptError, match="empty"):
        Pipeline(prompter=_TwoBoxes(), segmenter=_BoxFill())(_img(), blank)


def test_run_many_calls_a_batching_prompter_once_per_chunk():
    prompter = _BatchedTwoBoxes()
    pipe = Pipeline(prompter=prompter, segmenter=_BoxFill())
    imgs = [_img() for _ in range(7)]
    out = pipe.run_many(imgs, "x", progress=False, batch_size=3)
    assert prompter.batches == [3, 3, 1] and prompter.calls == 0
    single = Pipeline(prompter=_TwoBoxes(), segmenter=_BoxFill())(imgs[0], "x")
    for r in out:
        np.testing.assert_array_equal(r.mask, single.mask)
        assert r.extra["from"] == "batch" and r.prompts.text == "x" and "prompter" in r.timings
    # a bad image (blank prompt) is kept as its error; a failing batch falls back to one call per image
    out = pipe.run_many(imgs[:4], ["x", "  ", "fail", "x"], progress=False, batch_size=4, on_error="keep")
    assert isinstance(out[1], PromptError)
    assert [r.extra["from"] for i, r in enumerate(out) if i != 1] == ["single"] * 3
    assert prompter.calls == 3 and prompter.batches[-1] == 3
    with pytest.raises(PromptError):
        pipe.run_many(imgs[:2], ["x", ""], progress=False)


def test_run_many_without_batched_stages_is_per_image_and_segment_many_is_used():
    prompter = _TwoBoxes()
    out = Pipeline(prompter=prompter, segmenter=_BoxFill()).run_many(
        [_img()] * 5, "x", progress=False, batch_size=2
    )
    assert prompter.calls == 5 and all(r.mask.sum() == 25 + 80 for r in out)

    class _Batched(_BoxFill):
        def __init__(self):
            self.batches: list[int] = []

        def segment_many(self, images, prompts_list):
            self.batches.append(len(images))
            return [self.segment(i, p) for i, p in zip(images, prompts_list)]

    seg = _Batched()
    out = Pipeline(prompter=_TwoBoxes(), segmenter=seg).run_many(
        [_img()] * 5, "x", progress=False, batch_size=2
    )
    assert seg.batches == [2, 2, 1] and all(r.mask.sum() == 105 for r in out)
    out = Pipeline(segmenter=seg).run_many([_img()] * 3, None, progress=False, batch_size=8, box=[0, 0, 4, 4])
    assert seg.batches[-1] == 3 and all(r.mask.sum() == 16 for r in out)


def test_a_prompters_labels_become_the_instance_labels():
    class _Detects(Prompter):
        def prompts(self, image, text):
            return Prompts(boxes=[[1, 1, 6, 6], [10, 10, 20, 18]], labels=["cat", "dog"]), {}

    res = Pipeline(prompter=_Detects(), segmenter=_BoxFill(), combine="instances")(_img(), "cat. dog")
    assert res.instances.labels == ["cat", "dog"] and [e["area"] for e in res.to_coco(1)] == [25, 80]
    res = Pipeline(prompter=_TwoBoxes(), segmenter=_BoxFill(), combine="instances")(_img(), "cat. dog")
    assert res.instances.labels == ["cat. dog"] * 2  # no labels of their own: the text prompt


def test_clipseg_prompter_boxes_are_the_regions_of_clipsegs_map(tmp_path):
    """CLIPSeg as a prompter (a stage, for any segmenter): one box per 8-connected region of its map."""
    pytest.importorskip("transformers")
    from scipy import ndimage

    from lvlm.segmenters.clipseg import save_tiny_clipseg

    tiny = str(save_tiny_clipseg(tmp_path / "tiny"))
    img = np.random.default_rng(4).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    prob = registry.build("segmenter", "clipseg", model=tiny, device="cpu").probabilities(
        img, "segment crack"
    )
    thr = float(np.quantile(prob, 0.8))
    pipe = Pipeline.from_config(
        {
            "prompter": {
                "name": "clipseg",
                "model": tiny,
                "device": "cpu",
                "threshold": thr,
                "min_area": 0.0,
            },
            "segmenter": {"name": "_combine_boxfill"},
            "combine": "instances",
        }
    )
    res = pipe(img, "segment crack")
    labels, _ = ndimage.label(prob > thr, structure=np.ones((3, 3), bool))
    ref = {(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)}
    assert len(ref) > 1 and {tuple(int(v) for v in b) for b in res.prompts.boxes} == ref
    np.testing.assert_array_equal(res.extra["probability"], prob)
    assert len(res.instances) == len(ref) and res.instances.labels == ["segment crack"] * len(ref)
    with pytest.raises(ConfigError, match="box_mode"):
        registry.build("prompter", "clipseg", model=tiny, box_mode="every")


registry.register("segmenter", "_combine_boxfill")(_BoxFill)
