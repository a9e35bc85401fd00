"""The five-family matrix: the packaged bench/families config expands, and its tiny-random variant runs every
family through `lvlm bench` offline; the negatives dataset gives the false-positive rate as 1 - mean IoU."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from lvlm.bench.config import expand, load_bench_config
from lvlm.registry import build

FAMILIES = {"CLIP selection", "saliency", "detector", "SAM 3", "CLIPSeg"}


def test_families_matrix_covers_the_five_families():
    combos = expand(load_bench_config("bench/families"))
    fams = {c.labels["family"] for c in combos}
    assert fams == FAMILIES
    assert {c.dataset for c in combos} == {"COCO", "CXR", "COCO-absent", "CXR-absent"}
    methods = {c.labels["method"] for c in combos if c.labels["family"] == "saliency"}
    assert methods == {"gScoreCAM", "HilaCAM", "M2IB"}
    segs = {c.labels["segmenter"] for c in combos if c.labels["family"] in ("saliency", "detector")}
    assert segs == {"SAM 2", "MedSAM"}
    dets = {c.labels["method"] for c in combos if c.labels["family"] == "detector"}
    assert dets == {"GroundingDINO-T", "OWLv2", "OmDet-Turbo"}


def test_negatives_dataset_prompts_absent_classes():
    ds = build(
        "dataset", "negatives", of={"name": "scenes", "n": 3, "size": 48}, prompts=["a zebra", "a bus"]
    )
    inner = build("dataset", "scenes", n=3, size=48)
    assert len(ds) == len(inner)
    for s, orig in zip(ds, inner):
        assert s.prompt in ("a zebra", "a bus") and s.prompt != orig.prompt
        assert not np.asarray(s.mask).any() and s.tags["present"] == orig.prompt
    own = build("dataset", "negatives", of={"name": "scenes", "n": 4, "size": 48})
    for s in own:  # drawn from the other samples' prompts, never the image's own
        assert s.prompt != s.tags["present"]


def test_families_tiny_runs_every_family(tmp_path):
    from lvlm.cli import main

    out = tmp_path / "run"
    assert (
        main(["bench", "bench/families_tiny", "--out", str(out), "--quiet", "--set", "datasets.scenes.n=1"])
        == 0
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {r["labels"]["family"] for r in rows} == FAMILIES
    errors = [(r["labels"], r["error"]) for r in rows if r.get("error")]
    assert not errors, errors
    neg = [r for r in rows if r["dataset"] == "scenes-absent"]
    assert neg and all(r["gt_area"] == 0 for r in neg)
    for r in neg:  # empty ground truth: IoU 1 exactly when the pipeline answered nothing
        assert r["iou"] == (1.0 if r["pred_area"] == 0 else 0.0)
