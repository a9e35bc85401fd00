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
    rc = main(["segment", str(img), "--config", "sam/litemedsam_box", "--box", "15,10,45,30", "--overlay",
               "--out", str(out), "--device", "cpu", "-q"])
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
    rc = main(["segment", str(good1), str(bad), str(good2), "--config", "sam/litemedsam_box",
               "--box", "15,10,45,30", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "b.png" in err and "Traceback" not in err
    assert (out / "a_mask.png").exists() and (out / "c_mask.png").exists() and not (out / "b_mask.png").exists()


def test_user_errors_are_one_line_without_traceback(tmp_path):
    img = _img(tmp_path)
    cases = [
        (["segment", str(img), "--config", "no_such_config", "--prompt", "x"], "not found"),
        (["segment", str(img), "--config", "sam/litemedsam_box", "--box", "500,500,600,600"], "outside"),
        (["segment", str(img), "--config", "sam/litemedsam_box"], "--prompt"),
    ]
    for args, expect in cases:
        r = subprocess.run([sys.executable, "-m", "lvlm.cli", *args, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0, args
        assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "lvlm.cli", "segment", str(img), "--box", "1,2,3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected 4" in r.stderr


def test_config_with_wrong_key_names_it(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("segmenter: {name: litemedsam, devise: cpu}\n")
    rc = main(["segment", str(_img(tmp_path)), "--config", str(cfg), "--box", "1,1,20,20", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "'devise'" in err and "device" in err
