"""Bad input gets a clear error; odd but valid images load as H x W x 3 uint8 at their true size."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from lvlm.errors import ImageError
from lvlm.io import load_image, load_mask, mask_filename, save_mask, slug


def _save(tmp_path, img: Image.Image, name: str, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_modes_load_as_rgb_uint8(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (21, 34, 3), dtype=np.uint8)
    rgb = Image.fromarray(base)
    cases = {
        "grey.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "bw.png": rgb.convert("1"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "la.png": rgb.convert("LA"),
    }
    for name, img in cases.items():
        out = load_image(_save(tmp_path, img, name))
        assert out.shape == (21, 34, 3) and out.dtype == np.uint8, name
    # RGBA keeps its colour channels
    np.testing.assert_array_equal(load_image(_save(tmp_path, rgb.convert("RGBA"), "a.png")), base)


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.linspace(1000, 40000, 30 * 20).reshape(30, 20).astype(np.uint16)
    p = _save(tmp_path, Image.fromarray(arr), "deep.png")
    out = load_image(p)
    assert out.shape == (30, 20, 3)
    assert out.min() == 0 and out.max() == 255  # full range used, not saturated at 255
    assert np.all(np.diff(out[:, :, 0].reshape(-1).astype(int)) >= 0)  # monotone mapping


def test_16bit_tiff_real_nuclei(nuclei_paths):
    img, mask = nuclei_paths
    out = load_image(img)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8 and out.max() == 255
    labels = load_mask(mask, instance=True)
    assert len(np.unique(labels)) - 1 == 125


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert load_image(p).shape == (30, 10, 3)


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"not an image at all", "not an image")])
def test_corrupt_and_empty_files(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(p)


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="trunc"):
        load_image(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_one_pixel_and_huge(tmp_path, monkeypatch):
    assert load_image(_save(tmp_path, Image.new("RGB", (1, 1)), "one.png")).shape == (1, 1, 3)
    # a 20000 x 20000 image is refused from its header, before decoding 1.2 GB
    big = tmp_path / "big.png"
    Image.new("L", (20000, 20000)).save(big, optimize=False)
    with pytest.raises(ImageError, match="LVLM_MAX_PIXELS"):
        load_image(big)


def test_arrays():
    assert load_image(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert load_image(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    f = load_image(np.full((4, 4, 3), 0.5, np.float32))
    assert f.dtype == np.uint8 and f[0, 0, 0] == 128
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(ImageError):
        load_image(12)


def test_mask_file_is_single_channel_0_255(tmp_path):
    m = np.zeros((13, 17), bool)
    m[3:7, 2:9] = True
    p = save_mask(tmp_path / mask_filename("0001", "Segment Crack!"), m)
    assert p.name == "0001_segment_crack.png"
    img = Image.open(p)
    assert img.mode == "L" and img.size == (17, 13)
    assert set(np.unique(np.asarray(img))) == {0, 255}
    np.testing.assert_array_equal(load_mask(p), m)
    assert slug("a red  triangle") == "a_red_triangle"


# --- atomic writes -----------------------------------------------------------------------------------


def _writer(path: str, tag: int, n: int) -> None:
    from lvlm.fsutil import atomic_write

    for i in range(n):
        body = f"{tag}:{i}:".encode() + bytes([65 + tag]) * (50_000 + 97 * i)
        atomic_write(path, body + hashlib.sha1(body).hexdigest().encode())


def _complete(data: bytes) -> bool:
    body, digest = data[:-40], data[-40:]
    return hashlib.sha1(body).hexdigest().encode() == digest


def test_atomic_write_two_concurrent_writers(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "state.bin"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), t, 150)) for t in (0, 1)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            assert _complete(path.read_bytes())  # never a half-written or interleaved file
            reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert _complete(path.read_bytes())
    assert path.read_bytes().split(b":")[1] == b"149"  # one writer's last version
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temporary file left behind
    assert reads > 0


def test_atomic_write_kinds_and_failure(tmp_path):
    import json

    from lvlm.fsutil import atomic_open, atomic_write, atomic_write_json

    p = atomic_write(tmp_path / "sub" / "a.txt", "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    assert (p.stat().st_mode & 0o777) == (0o666 & ~_umask())  # a plain file's permissions, not mkstemp's 0600
    atomic_write(tmp_path / "b.npy", lambda f: np.save(f, np.arange(3)))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.arange(3))
    atomic_write_json(tmp_path / "c.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2]}
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "sub" / "a.txt", "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo"  # the old version kept
    assert [q.name for q in (tmp_path / "sub").iterdir()] == ["a.txt"]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["b.npy", "c.json", "sub"]


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m
