"""Dataset loaders on small fixtures written in each dataset's real published layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lvlm.data.base import DatasetNotFoundError, subsample
from lvlm.registry import build


def _img(path, h=20, w=30, value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (
        np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
        if value is None
        else np.full((h, w, 3), value, np.uint8)
    )
    Image.fromarray(arr).save(path)
    return path


def _mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8) * 255).save(path)
    return path


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_every_loader_is_registered():
    from lvlm.registry import available

    assert {"coco", "cxr", "cod10k", "mvtec", "drywall", "nuclei", "folder"} <= set(available("dataset"))


@pytest.mark.parametrize(
    "name,kwargs,url",
    [
        ("coco", {}, "cocodataset.org"),
        ("cxr", {}, "chest-xray-masks-and-labels"),
        ("cod10k", {}, "cod10k"),
        ("mvtec", {}, "mvtec.com"),
        ("drywall", {}, "roboflow.com"),
        ("nuclei", {}, "stardist"),
        ("folder", {"prompt": "x"}, "images"),
    ],
)
def test_missing_data_is_one_error_naming_layout_and_source(tmp_path, name, kwargs, url):
    with pytest.raises(DatasetNotFoundError) as info:
        build("dataset", name, root=str(tmp_path / "absent"), **kwargs)
    msg = str(info.value)
    assert "Expected layout" in msg and url in msg.lower() or url in msg


def test_subsample_is_seeded_sorted_and_complete():
    a, b = subsample(100, 10, seed=1), subsample(100, 10, seed=2)
    assert a == subsample(100, 10, seed=1) and a != b and a == sorted(a) and len(set(a)) == 10
    assert subsample(5, None) == subsample(5, 50) == list(range(5))


def _write_coco(root):
    h, w = 40, 60
    _img(root / "val2017" / "000000000001.jpg", h, w)
    _img(root / "val2017" / "000000000002.jpg", h, w, seed=1)
    poly = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]
    anns = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "segmentation": poly(5, 5, 25, 25),
            "area": 400.0,
            "bbox": [5, 5, 20, 20],
            "iscrowd": 0,
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "segmentation": poly(30, 10, 50, 30),
            "area": 400.0,
            "bbox": [30, 10, 20, 20],
            "iscrowd": 0,
        },
        {
            "id": 12,
            "image_id": 2,
            "category_id": 2,
            "segmentation": poly(0, 0, 10, 10),
            "area": 100.0,
            "bbox": [0, 0, 10, 10],
            "iscrowd": 0,
        },
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "height": h, "width": w},
            {"id": 2, "file_name": "000000000002.jpg", "height": h, "width": w},
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "dining table"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_coco_selection_and_masks(tmp_path):
    pytest.importorskip("pycocotools")
    root = _write_coco(tmp_path / "coco")
    sel = tmp_path / "sel.csv"
    sel.write_text("image_id,annotation_id,difficulty\n1,11,hard\n2,12,easy\n")
    ds = build("dataset", "coco", root=str(root), selection=str(sel))
    assert len(ds) == 2 and ds.ids() == ["1_11", "2_12"]
    s = ds[0]
    assert s.prompt == "dining table" and s.tags == {"category": "dining table", "difficulty": "hard"}
    assert (
        s.mask.shape == (40, 60) and s.mask[10:30, 30:50].all() and s.mask.sum() == pytest.approx(400, abs=45)
    )
    np.testing.assert_allclose(s.box, [30, 10, 50, 30])
    every = build("dataset", "coco", root=str(root))
    assert len(every) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,annotation_id,difficulty\n2,11,hard\n")
    from lvlm.errors import ConfigError

    with pytest.raises(ConfigError, match="belongs to image 1"):
        build("dataset", "coco", root=str(root), selection=str(bad))


def test_coco_selection_builder_levels_by_objective_cues(tmp_path):
    pytest.importorskip("pycocotools")
    from lvlm.data.coco import (
        LEVELS,
        _coco,
        edge_density,
        make_selection,
        selection_candidates,
        write_selection,
    )

    root = _write_coco(tmp_path / "coco")
    coco = _coco(root / "annotations" / "instances_val2017.json")
    cands = selection_candidates(coco, root / "val2017")
    # image 1: two categories, each once -> the largest; image 2: one object
    assert [(c["image_id"], c["annotation_id"], c["n_instances"]) for c in cands] == [(1, 10, 2), (2, 12, 1)]
    assert 0 <= cands[0]["clutter"] <= 1
    flat = np.full((32, 32, 3), 128, np.uint8)
    busy = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert edge_density(flat) == 0.0 < edge_density(busy)
    # many synthetic candidates: the easiest quartile has big lone objects, the hardest small crowded ones
    rng = np.random.default_rng(0)
    many = [
        {
            "image_id": i,
            "annotation_id": i,
            "category": "x",
            "n_instances": int(rng.integers(1, 30)),
            "area_fraction": float(rng.uniform(0.01, 0.6)),
            "clutter": float(rng.uniform(0, 0.5)),
        }
        for i in range(400)
    ]
    rows = make_selection(many, per_level=25, seed=0)
    assert len(rows) == 100 and [r["difficulty"] for r in rows[::25]] == list(LEVELS)
    easy = [r for r in rows if r["difficulty"] == "easy"]
    vhard = [r for r in rows if r["difficulty"] == "very hard"]
    assert np.mean([r["area_fraction"] for r in easy]) > np.mean([r["area_fraction"] for r in vhard])
    assert np.mean([r["n_instances"] for r in easy]) < np.mean([r["n_instances"] for r in vhard])
    assert rows == make_selection(many, per_level=25, seed=0)
    path = write_selection(rows, tmp_path / "selection.csv")
    from lvlm.data.coco import read_selection

    back = read_selection(path)
    assert [(r["image_id"], r["difficulty"]) for r in back] == [
        (r["image_id"], r["difficulty"]) for r in rows
    ]


def test_cxr_kaggle_layout_splits_and_montgomery_left_right(tmp_path):
    base = tmp_path / "cxr" / "data" / "Lung Segmentation"
    for i in range(3):
        _img(base / "CXR_png" / f"MCUCXR_000{i}_0.png")
        _mask(base / "masks" / f"MCUCXR_000{i}_0.png", _rect(20, 30, 2, 18, 2, 12))
        _img(base / "CXR_png" / f"CHNCXR_000{i}_1.png")
        _mask(base / "masks" / f"CHNCXR_000{i}_1_mask.png", _rect(20, 30, 2, 18, 15, 28))
    _img(base / "CXR_png" / "CHNCXR_0009_0.png")  # no mask: skipped
    test = build("dataset", "cxr", root=str(tmp_path / "cxr"))
    assert test.ids() == [f"MCUCXR_000{i}_0" for i in range(3)]
    s = test[0]
    assert s.prompt == "lungs" and s.mask.sum() == 16 * 10 and s.tags["source"] == "montgomery"
    train = build("dataset", "cxr", root=str(tmp_path / "cxr"), split="train")
    assert len(train) == 3 and train[0].mask[:, 15:28].any()
    assert len(build("dataset", "cxr", root=str(tmp_path / "cxr"), split="all", n=4, seed=1)) == 4
    mont = tmp_path / "MontgomerySet"
    _img(mont / "CXR_png" / "MCUCXR_0001_0.png")
    _mask(mont / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png", _rect(20, 30, 2, 18, 2, 12))
    _mask(mont / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png", _rect(20, 30, 2, 18, 16, 26))
    m = build("dataset", "cxr", root=str(mont))[0].mask
    assert m.sum() == 16 * 10 + 16 * 10 and m[5, 5] and m[5, 20] and not m[5, 14]


def test_cod10k_layout_prompts_from_file_names(tmp_path):
    base = tmp_path / "COD10K-v3" / "Test"
    names = [
        "COD10K-CAM-1-Aquatic-1-BatFish-1",
        "COD10K-CAM-3-Flying-53-Bird-3",
        "COD10K-NonCAM-5-Background-1-Sky-2",
    ]
    for i, n in enumerate(names):
        _img(base / "Image" / f"{n}.jpg", seed=i)
        if "NonCAM" not in n:
            _mask(base / "GT_Object" / f"{n}.png", _rect(20, 30, 3, 9, 4, 11))
    ds = build("dataset", "cod10k", root=str(tmp_path))
    assert ds.ids() == names[:2]
    s = ds[0]
    assert s.prompt == "bat fish" and s.tags == {"kind": "CAM", "superclass": "Aquatic", "class": "BatFish"}
    assert s.mask.sum() == 6 * 7
    withbg = build("dataset", "cod10k", root=str(tmp_path), include_noncam=True)
    assert len(withbg) == 3 and not withbg[2].mask.any()
    assert len(build("dataset", "cod10k", root=str(tmp_path / "COD10K-v3"), n=1, seed=3)) == 1


def test_mvtec_defect_types_and_good_images(tmp_path):
    cat = tmp_path / "mvtec" / "carpet"
    _img(cat / "train" / "good" / "000.png")
    _img(cat / "test" / "good" / "000.png")
    for kind in ("cut", "metal_contamination"):
        for i in range(2):
            _img(cat / "test" / kind / f"00{i}.png", seed=i)
            _mask(cat / "ground_truth" / kind / f"00{i}_mask.png", _rect(20, 30, 1, 5, 1, 5 + i))
    ds = build("dataset", "mvtec", root=str(tmp_path / "mvtec"), prompt="{defect} defect")
    assert ds.ids() == ["cut_000", "cut_001", "metal_contamination_000", "metal_contamination_001"]
    s = ds[3]
    assert s.tags == {"defect": "metal_contamination", "category": "carpet"}
    assert s.prompt == "metal contamination defect" and s.mask.sum() == 4 * 5
    good = build("dataset", "mvtec", root=str(cat), include_good=True, defects=["good", "cut"])
    assert len(good) == 3 and good.ids()[-1] == "good_000" and not good[-1].mask.any()


def test_drywall_roboflow_coco_export_boxes_to_masks(tmp_path):
    root = tmp_path / "cracks"
    for split in ("train", "valid"):
        _img(root / split / "a_jpg.rf.123.jpg", 20, 30)
        _img(root / split / "b_jpg.rf.456.jpg", 20, 30, seed=1)
        data = {
            "images": [
                {"id": 0, "file_name": "a_jpg.rf.123.jpg", "height": 20, "width": 30},
                {"id": 1, "file_name": "b_jpg.rf.456.jpg", "height": 20, "width": 30},
            ],
            "categories": [
                {"id": 0, "name": "cracks-3ii36", "supercategory": "none"},
                {"id": 1, "name": "crack", "supercategory": "cracks-3ii36"},
                {"id": 2, "name": "drywall-join", "supercategory": "cracks-3ii36"},
            ],
            "annotations": [
                {
                    "id": 0,
                    "image_id": 0,
                    "category_id": 1,
                    "bbox": [2.5, 3, 5, 4],
                    "area": 20,
                    "segmentation": [],
                    "iscrowd": 0,
                },
                {
                    "id": 1,
                    "image_id": 0,
                    "category_id": 1,
                    "bbox": [20, 10, 4, 4],
                    "area": 16,
                    "segmentation": [],
                    "iscrowd": 0,
                },
                {
                    "id": 2,
                    "image_id": 1,
                    "category_id": 2,
                    "bbox": [0, 0, 30, 5],
                    "area": 150,
                    "segmentation": [],
                    "iscrowd": 0,
                },
            ],
        }
        (root / split / "_annotations.coco.json").write_text(json.dumps(data))
    ds = build("dataset", "drywall", root=str(root))
    assert ds.ids() == ["a_jpg.rf.123_crack", "b_jpg.rf.456_taping"]
    crack, tape = ds[0], ds[1]
    assert crack.prompt == "segment crack" and crack.prompts[-1] == "segment fracture"
    assert (
        crack.mask.sum() == 6 * 4 + 4 * 4 and crack.mask[3, 2] and crack.mask[6, 7] and not crack.mask[7, 2]
    )
    assert tape.prompt == "segment taping area" and tape.tags == {"class": "taping"} and tape.mask[:5].all()
    assert crack.box.shape == (2, 4)
    rnd = [
        build("dataset", "drywall", root=str(root), split="train", prompt_mode="random", seed=s)[0].prompt
        for s in range(12)
    ]
    assert set(rnd) <= set(crack.prompts) and len(set(rnd)) > 1
    import shutil

    shutil.copytree(root, tmp_path / "taping")
    both = build("dataset", "drywall", root=[str(root), str(tmp_path / "taping")], classes=["crack"])
    assert both.ids() == ["cracks/a_jpg.rf.123_crack", "taping/a_jpg.rf.123_crack"]


def test_nuclei_instances_and_semantic(nuclei_paths):
    from lvlm.io import load_mask

    img_path, mask_path = nuclei_paths
    labels = load_mask(mask_path, instance=True)
    ds = build("dataset", "nuclei", root=str(img_path.parent))
    assert len(ds) == len(np.unique(labels)) - 1 == 125
    s = ds[0]
    ys, xs = np.nonzero(labels == s.tags["instance"])
    np.testing.assert_array_equal(s.box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert s.prompt == "nucleus" and s.image.shape == (512, 512, 3) and s.tags["half"] in ("left", "right")
    sem = build("dataset", "nuclei", root=str(img_path.parent), mode="semantic")
    assert len(sem) == 1 and sem[0].prompt == "nuclei" and np.array_equal(sem[0].mask, labels > 0)
    assert len(build("dataset", "nuclei", image=str(img_path), mask=str(mask_path), n=10, seed=0)) == 10


def test_folder_fixed_prompt_and_csv(tmp_path):
    root = tmp_path / "mine"
    for i in range(3):
        _img(root / "images" / f"p{i}.jpg", seed=i)
        _mask(root / "masks" / f"p{i}_mask.png", _rect(20, 30, 0, 5 + i, 0, 5))
    ds = build("dataset", "folder", root=str(root), prompt="a thing", mask_suffix="_mask")
    assert ds.ids() == ["p0", "p1", "p2"] and ds[2].mask.sum() == 7 * 5 and ds[0].prompt == "a thing"
    (root / "prompts.csv").write_text(
        "image,prompt,mask,class\np0.jpg,a cat,p0_mask.png,cat\np0.jpg,a dog,p1_mask.png,dog\np2,a cow,,cow\n"
    )
    ds = build("dataset", "folder", root=str(root), prompts="prompts.csv", mask_suffix="_mask")
    assert ds.ids() == ["p0_a_cat", "p0_a_dog", "p2"]
    assert [s.tags["class"] for s in ds] == ["cat", "dog", "cow"] and ds[1].mask.sum() == 6 * 5


def test_make_coco_selection_script(tmp_path):
    pytest.importorskip("pycocotools")
    import csv
    import runpy

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 13):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 100, "width": 100})
        for k in range(int(rng.integers(1, 6))):
            side = int(rng.integers(8, 60))
            anns.append(
                {
                    "id": 100 * i + k,
                    "image_id": i,
                    "category_id": k + 1,
                    "area": float(side * side),
                    "bbox": [0, 0, side, side],
                    "iscrowd": 0,
                    "segmentation": [[0, 0, side, 0, side, side, 0, side]],
                }
            )
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": k, "name": f"c{k}"} for k in range(1, 7)],
            }
        )
    )
    main = runpy.run_path(
        str(__import__("pathlib").Path(__file__).parents[1] / "scripts" / "make_coco_selection.py")
    )["main"]
    assert (
        main(["--root", str(root), "--out", str(tmp_path / "sel.csv"), "--per-level", "2", "--no-edges"]) == 0
    )
    with (tmp_path / "sel.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["difficulty"] for r in rows] == ["easy"] * 2 + ["medium"] * 2 + ["hard"] * 2 + ["very hard"] * 2
    (root / "val2017").mkdir()
    ds = build("dataset", "coco", root=str(root), selection=str(tmp_path / "sel.csv"))
    assert len(ds) == 8 and ds[0].tags["difficulty"] == "easy"
