"""The lvlm command: what a user runs, what it writes, and how it fails."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lvlm import __version__
from lvlm.cli import main


def _img(tmp_path, name="img.png", size=(40, 60)):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    arr[10:30, 15:45] = (230, 40, 40)
    p = tmp_path / name
    Image.fromarray(arr).save(p)
    return p


def test_version_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("generator:", "segmenter:", "litemedsam", "sam", "selector:", "clip"):
        assert name in out
    assert main(["list", "segmenter"]) == 0
    assert "generator:" not in capsys.readouterr().out
    assert main(["list", "gadget"]) == 1
    assert "valid kinds" in capsys.readouterr().err


def test_segment_box_writes_mask_and_overlay_at_input_size(tmp_path, capsys):
    img = _img(tmp_path, size=(45, 70))
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(img),
            "--config",
            "sam/litemedsam_box",
            "--box",
            "15,10,45,30",
            "--overlay",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    mask = Image.open(out / "img_mask.png")
    assert mask.mode == "L" and mask.size == (70, 45)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(out / "img_mask_overlay.png").size == (70, 45)


def test_bad_image_is_reported_and_others_still_written(tmp_path, capsys):
    good1 = _img(tmp_path, "a.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG broken")
    good2 = _img(tmp_path, "c.png")
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(good1),
            str(bad),
            str(good2),
            "--config",
            "sam/litemedsam_box",
            "--box",
            "15,10,45,30",
            "--out",
            str(out),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "b.png" in err and "Traceback" not in err
    assert (
        (out / "a_mask.png").exists() and (out / "c_mask.png").exists() and not (out / "b_mask.png").exists()
    )


def test_user_errors_are_one_line_without_traceback(tmp_path):
    img = _img(tmp_path)
    cases = [
        (["segment", str(img), "--config", "no_such_config", "--prompt", "x"], "not found"),
        (["segment", str(img), "--config", "sam/litemedsam_box", "--box", "500,500,600,600"], "outside"),
        (["segment", str(img), "--config", "sam/litemedsam_box"], "--prompt"),
    ]
    for args, expect in cases:
        r = subprocess.run(
            [sys.executable, "-m", "lvlm.cli", *args, "--out", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode != 0, args
        assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "lvlm.cli", "segment", str(img), "--box", "1,2,3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "expected 4" in r.stderr


def test_config_with_wrong_key_names_it(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("segmenter: {name: litemedsam, devise: cpu}\n")
    rc = main(
        ["segment", str(_img(tmp_path)), "--config", str(cfg), "--box", "1,1,20,20", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "'devise'" in err and "device" in err


def _coco_masks(path, h, w):
    """The masks of a COCO results file, decoded by pycocotools."""
    import json

    mask_utils = pytest.importorskip("pycocotools.mask")
    entries = json.loads(path.read_text())
    masks = [
        mask_utils.decode({"size": e["segmentation"]["size"], "counts": e["segmentation"]["counts"].encode()})
        for e in entries
    ]
    return entries, (np.stack(masks).astype(bool) if masks else np.zeros((0, h, w), bool))


def test_segment_instances_writes_coco_json_beside_the_union_mask(tmp_path, capsys):
    img = _img(tmp_path, size=(45, 70))
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(img),
            "--config",
            "sam/litemedsam_box",
            "--box",
            "15,10,45,30",
            "--box",
            "2,2,12,12",
            "--instances",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    union = np.asarray(Image.open(out / "img_mask.png")) > 0
    entries, masks = _coco_masks(out / "img_mask.json", 45, 70)
    assert len(entries) == 2 and {e["image_id"] for e in entries} == {"img"}
    np.testing.assert_array_equal(masks.any(0), union)


def test_everything_mode_without_selector_runs_with_no_prompt_given_instances(tmp_path, capsys):
    """Tiny random SAM (real architecture) in everything mode: every mask as an instance, no prompt needed."""
    import yaml

    from lvlm.pipeline import load_config

    cfg = tmp_path / "everything.yaml"
    cfg.write_text(yaml.safe_dump({"generator": load_config("base/tiny")["generator"]}))
    img = _img(tmp_path, size=(48, 64))
    out = tmp_path / "out"
    rc = main(["segment", str(img), "--config", str(cfg), "--out", str(out), "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "selector" in err and "--instances" in err and "Traceback" not in err
    rc = main(
        ["segment", str(img), "--config", str(cfg), "--instances", "--out", str(out), "--device", "cpu", "-q"]
    )
    assert rc == 0, capsys.readouterr().err
    union = np.asarray(Image.open(out / "img_everything.png")) > 0
    entries, masks = _coco_masks(out / "img_everything.json", 48, 64)
    assert len(entries) >= 1 and all(e["area"] == int(m.sum()) for e, m in zip(entries, masks))
    np.testing.assert_array_equal(masks.any(0), union)


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_prompt_is_refused_in_one_line(tmp_path, capsys, blank):
    rc = main(
        [
            "segment",
            str(_img(tmp_path)),
            "--config",
            "sam/litemedsam_box",
            "--prompt",
            blank,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "empty" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_non_latin_prompt_gets_a_non_empty_file_name(tmp_path, capsys):
    from lvlm.io import slug

    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(_img(tmp_path)),
            "--config",
            "sam/litemedsam_box",
            "--prompt",
            "星",
            "--box",
            "15,10,45,30",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (out / f"img_{slug('星')}.png").exists() and slug("星") != "mask"
