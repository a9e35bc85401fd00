"""Detector prompters (GroundingDINO, OWLv2, OmDet-Turbo) on tiny random models of the real transformers
classes, pinned against transformers' own processors, forwards and post-processing on the same weights."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from lvlm.errors import WeightsError
from lvlm.models.detectors import (
    GROUNDING_DINO,
    OMDET_TURBO,
    OWLV2,
    PRESETS,
    Detections,
    grounding_dino_prompt,
    nms_and_top,
    split_classes,
)
from lvlm.pipeline import EmptyMaskWarning, Pipeline
from lvlm.registry import build


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((60, 80), (64, 48), (50, 70)):
        im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        im[10:30, 12:34] = (240, 40, 40)
        out.append(im)
    return out


@pytest.fixture(scope="module")
def gdino():
    return build("prompter", "detector", model="tiny-random-grounding-dino", device="cpu")


@pytest.fixture(scope="module")
def owl():
    return build("prompter", "detector", model="tiny-random-owlv2", device="cpu")


@pytest.fixture(scope="module")
def omdet():
    return build("prompter", "detector", model="tiny-random-omdet-turbo", device="cpu")


def test_prompt_formatting():
    assert split_classes("A Cat. a dog; cat.") == ["A Cat", "a dog", "cat"]
    assert split_classes(["red car", "bus"]) == ["red car", "bus"]
    assert grounding_dino_prompt(["A Cat", "a dog"]) == "a cat. a dog."
    # transformers merges candidate labels the same way
    from transformers.models.grounding_dino.processing_grounding_dino import _merge_candidate_labels_text

    assert grounding_dino_prompt(["A Cat", "a dog"]) == _merge_candidate_labels_text(["A Cat", "a dog"])


def test_grounding_dino_matches_transformers_postprocessing(gdino, images):
    det = gdino.detector
    classes = [["cat", "dog"], ["red car"], ["cat", "round shape"]]
    outputs, inputs = det.outputs(images, classes)
    sizes = [im.shape[:2] for im in images]
    ours = det.postprocess(outputs, inputs, sizes, classes, threshold=0.3, text_threshold=0.0)
    ref = det.processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.3, text_threshold=0.25, target_sizes=sizes
    )
    for o, r, cls in zip(ours, ref, classes):
        assert len(o) == len(r["boxes"]) > 0
        np.testing.assert_allclose(o.boxes, r["boxes"].numpy(), atol=1e-5)
        np.testing.assert_allclose(o.scores, r["scores"].numpy(), atol=1e-5)
        assert set(o.text_labels) <= set(cls)
    # with the text threshold, the matched class shares a word with the tokens transformers decodes above it
    kept = det.postprocess(outputs, inputs, sizes, classes, threshold=0.3, text_threshold=0.25)
    for o, r in zip(kept, ref):
        ref_boxes = r["boxes"].numpy()
        for box, lab in zip(o.boxes, o.text_labels):
            j = int(np.argmin(np.abs(ref_boxes - box).sum(1)))
            words = set(r["text_labels"][j].replace(".", " ").split())
            if lab:
                assert set(lab.split()) & words, (lab, r["text_labels"][j])
            else:  # matched no phrase: transformers decodes no phrase token above the text threshold either
                assert not words & {w for c in classes for x in c for w in x.split()}
    # the text threshold decides the class, not which boxes are kept (lang-sam); drop_unmatched drops them
    strict = det.postprocess(outputs, inputs, sizes, classes, threshold=0.3, text_threshold=0.99)
    assert [len(s) for s in strict] == [len(o) for o in ours]
    assert any((s.labels == -1).any() for s in strict)
    assert all(set(s.text_labels) <= set(c) | {""} for s, c in zip(strict, classes))


def test_grounding_dino_prompter_equals_transformers_by_hand(gdino, images):
    """What lang-sam does: processor(images, 'a cat. a dog.') -> model -> post-processing (0.3 / 0.25)."""
    img = images[0]
    proc, net = gdino.detector.processor, gdino.detector.model
    inputs = proc(images=img, text="a cat. a dog.", return_tensors="pt")
    with torch.inference_mode():
        out = net(**inputs)
    ref = proc.post_process_grounded_object_detection(
        out, inputs.input_ids, threshold=0.3, text_threshold=0.25, target_sizes=[img.shape[:2]]
    )[0]
    prompts, extra = gdino.prompts(img, "A Cat. a dog")
    boxes = ref["boxes"].numpy().copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, img.shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, img.shape[0])
    keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 1.0
    got = {tuple(np.round(b, 3)) for b in prompts.boxes}
    assert len(prompts.boxes) > 0
    assert got == {tuple(np.round(b, 3)) for b in boxes[keep]}
    assert set(extra["detector_labels"]) <= {"A Cat", "a dog", ""}  # the user's phrases, or none matched
    assert np.all(extra["detector_scores"] > 0.3)


def test_owlv2_cached_text_forward_equals_model_forward(owl, images):
    det = owl.detector
    classes = [["a cat", "a dog"], ["red car"], ["a cat", "square", "bus"]]
    outputs, inputs = det.outputs(images, classes)
    # transformers' own forward, with its processor padding the query lists
    ref_in = det.processor(text=classes, images=images, return_tensors="pt")
    with torch.inference_mode():
        ref = det.model(**ref_in)
    np.testing.assert_allclose(outputs.pred_boxes.numpy(), ref.pred_boxes.numpy(), atol=1e-5)
    # transformers pads the query lists with " " queries and scores them (their first token is not 0, so its
    # query mask keeps them); we mask padded queries out: compare the real ones and mask the reference's too
    ref_logits = ref.logits.clone()
    for i, c in enumerate(classes):
        n = len(c)
        np.testing.assert_allclose(outputs.logits[i, :, :n].numpy(), ref.logits[i, :, :n].numpy(), atol=1e-4)
        assert torch.all(outputs.logits[i, :, n:] < -1e30)
        ref_logits[i, :, n:] = torch.finfo(ref_logits.dtype).min
    ref.logits = ref_logits
    sizes = [im.shape[:2] for im in images]
    ours = det.postprocess(outputs, inputs, sizes, classes, threshold=0.1)
    tf = det.processor.post_process_grounded_object_detection(
        ref, threshold=0.1, target_sizes=sizes, text_labels=classes
    )
    for o, r in zip(ours, tf):
        np.testing.assert_allclose(o.boxes, r["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(o.scores, r["scores"].numpy(), atol=1e-5)
        assert o.text_labels == r["text_labels"]
    assert len(det._text_cache) == 5  # one embedding per distinct class string


def test_omdet_turbo_equals_transformers_by_hand(omdet, images):
    det = omdet.detector
    classes = [["cat", "dog"], ["red car"], ["cat"]]
    ref = []
    for im, cls in zip(
        images, classes
    ):  # one image at a time (a batch pads the class lists: see Detector.detect)
        inputs = det.processor(images=im, text=cls, return_tensors="pt")
        with torch.inference_mode():
            out = det.model(**inputs)
        ref += det.processor.post_process_grounded_object_detection(
            out, text_labels=[cls], threshold=0.3, nms_threshold=0.5, target_sizes=[im.shape[:2]]
        )
    got = det.detect(images, classes, threshold=0.3, nms=0.5)
    for g, r in zip(got, ref):
        assert len(g) == len(r["boxes"]) > 0
        np.testing.assert_allclose(g.boxes, r["boxes"].numpy(), atol=1e-5)
        np.testing.assert_allclose(g.scores, r["scores"].numpy(), atol=1e-5)
        assert g.text_labels == r["text_labels"]


@pytest.mark.parametrize("name", ["owl", "omdet", "gdino"])
def test_batched_equals_one_by_one(name, request, images):
    prompter = request.getfixturevalue(name)
    imgs = [images[0], images[0][::-1].copy(), images[0][:, ::-1].copy()]  # one size: no padding in the batch
    texts = ["cat. dog", "red car", "cat"]
    many = prompter.prompts_many(imgs, texts)
    for img, t, (pr, ex) in zip(imgs, texts, many):
        one, ex1 = prompter.prompts(img, t)
        assert pr.boxes.shape == one.boxes.shape

        def rows(b, labels):  # order-free: near-tied scores of a random model may swap places
            order = np.lexsort(np.round(b, 2).T[::-1])
            return b[order], [labels[i] for i in order]

        (b0, l0), (b1, l1) = rows(pr.boxes, ex["detector_labels"]), rows(one.boxes, ex1["detector_labels"])
        np.testing.assert_allclose(b0, b1, atol=1e-3)
        assert l0 == l1


def test_nms_and_max_boxes():
    from torchvision.ops import nms

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (30, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 30).astype(np.float32)
    det = Detections(boxes, scores, np.zeros(30), ["x"])
    ref = nms(torch.as_tensor(boxes), torch.as_tensor(scores), 0.5).numpy()
    out = nms_and_top(det, nms=0.5, max_boxes=4)
    np.testing.assert_array_equal(out.boxes, boxes[ref[:4]])
    top = nms_and_top(det, nms=None, max_boxes=3)
    np.testing.assert_array_equal(np.sort(top.scores), np.sort(scores)[-3:])


def test_detector_litemedsam_pipeline_masks_at_input_size(images):
    pipe = Pipeline.from_config(
        {
            "prompter": {
                "name": "detector",
                "model": "tiny-random-grounding-dino",
                "max_boxes": 4,
                "device": "cpu",
            },
            "segmenter": {"name": "litemedsam", "device": "cpu", "encoder_backend": "torch"},
        }
    )
    img = images[1]
    res = pipe(img, "a cat. a red car")
    assert res.mask.shape == img.shape[:2]
    assert 0 < len(res.candidates) <= 4
    assert res.candidates.masks.shape[1:] == img.shape[:2]
    # zero detections (nothing passes the threshold): an empty mask and a warning, no exception
    pipe.prompter.threshold = 1.0
    with pytest.warns(EmptyMaskWarning):
        empty = pipe(img, "a cat")
    assert empty.mask.shape == img.shape[:2] and not empty.mask.any()
    assert empty.prompts.boxes.shape == (0, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMaskWarning)
        many = pipe.run_many(images, ["cat", "dog", "bus"], progress=False, batch_size=2)
    assert [r.mask.shape for r in many] == [im.shape[:2] for im in images]
    assert not any(r.mask.any() for r in many)


@pytest.mark.parametrize(
    "preset", ["grounding-dino-tiny", "grounding-dino-base", "owlv2-base", "omdet-turbo"]
)
def test_offline_preset_fails_fast_naming_hub_id(preset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        build("prompter", "detector", model=preset, device="cpu")
    assert time.perf_counter() - t0 < 10
    assert PRESETS[preset] in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_values():
    from lvlm.errors import ConfigError

    with pytest.raises(ConfigError, match="max_boxes"):
        build("prompter", "detector", model="tiny-random-owlv2", max_boxes=0, device="cpu")
    with pytest.raises(ConfigError, match="threshold"):
        build("prompter", "detector", model="tiny-random-owlv2", threshold=1.5, device="cpu")


def test_families():
    assert {GROUNDING_DINO, OWLV2, OMDET_TURBO} == {"grounding_dino", "owlv2", "omdet_turbo"}


def test_drop_unmatched(images):
    keep = build(
        "prompter", "detector", model="tiny-random-grounding-dino", text_threshold=0.99, device="cpu"
    )
    drop = build(
        "prompter",
        "detector",
        model="tiny-random-grounding-dino",
        text_threshold=0.99,
        drop_unmatched=True,
        device="cpu",
    )
    _, ea = keep.prompts(images[0], "cat. dog")
    b, eb = drop.prompts(images[0], "cat. dog")
    assert "" in ea["detector_labels"] and "" not in eb["detector_labels"]
    assert len(b.boxes) == sum(lab != "" for lab in ea["detector_labels"])


def test_packaged_detector_and_sam3_configs_have_valid_keys():
    """Every config under configs/detector and configs/sam3 names registered components with their real
    keys."""
    from lvlm.pipeline import CONFIG_DIR, STAGES, load_config
    from lvlm.registry import check_kwargs, get

    paths = sorted((CONFIG_DIR / "detector").glob("*.yaml")) + sorted((CONFIG_DIR / "sam3").glob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        cfg = load_config(path)
        for stage in STAGES:
            spec = cfg.get(stage)
            if spec is None:
                continue
            spec = dict(spec)
            entry = get(stage, spec.pop("name"))
            check_kwargs(entry.obj, spec, where=f"{path.name} {stage}")


@pytest.mark.parametrize(
    "segmenter",
    [
        {"name": "sam", "model_type": "vit_tiny", "checkpoint": None, "encoder_backend": "torch"},
        {"name": "medsam", "model_type": "vit_tiny", "checkpoint": None, "encoder_backend": "torch"},
        {"name": "sam3", "model": "tiny-random"},  # boxes become SAM 3's exemplars
    ],
)
def test_detector_boxes_feed_other_segmenters(segmenter, images):
    pipe = Pipeline.from_config(
        {
            "prompter": {
                "name": "detector",
                "model": "tiny-random-grounding-dino",
                "max_boxes": 3,
                "device": "cpu",
            },
            "segmenter": {**segmenter, "device": "cpu"},
            "combine": "union",
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMaskWarning)
        res = pipe(images[2], "a cat. a bus")
    assert res.mask.shape == images[2].shape[:2]
    assert len(res.prompts.boxes) == 3
    if segmenter["name"] != "sam3":
        assert len(res.candidates) == 3  # one mask per box, carrying the box's class
        assert res.candidates.labels == [lab or "a cat. a bus" for lab in res.extra["detector_labels"]]
