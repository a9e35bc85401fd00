"""lvlm serve's page in a real browser (Debian's chromium driven by Playwright) against `lvlm segment`.

The server is the real ``lvlm serve`` command in a subprocess on 127.0.0.1 and a free port; the page's
downloaded mask must equal, pixel for pixel, the mask the CLI writes for the same image, prompt and config.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("LVLM_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
EXAMPLES = Path(__file__).resolve().parents[1] / "lvlm" / "assets" / "examples"
SHAPES = EXAMPLES / "shapes.png"
NUCLEI = EXAMPLES / "nuclei_crop.png"

if not CHROMIUM.exists():
    pytest.skip(
        f"no chromium at {CHROMIUM} (apt-get install -y chromium, or set LVLM_CHROMIUM)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
pytest.importorskip("fastapi", reason="lvlm[serve] (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="lvlm[serve] (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from lvlm.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`lvlm serve` (both default configs) in a subprocess; its log in a temp file."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lvlm.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    try:
        while True:
            assert proc.poll() is None, f"lvlm serve exited: {log.read_text()}"
            assert time.time() - t0 < 120, f"lvlm serve did not answer: {log.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server)
    pg.wait_for_selector("#config option[value='embedded']", state="attached")
    yield pg
    ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def _cli_mask(tmp_path: Path, image: Path, *args: str) -> np.ndarray:
    out = tmp_path / "cli"
    assert main(["segment", str(image), *args, "--out", str(out), "--quiet"]) == 0
    (written,) = list(out.glob("*.png"))
    return np.asarray(Image.open(written))


def _download(page, selector: str, dest: Path) -> Path:
    with page.expect_download() as info:
        page.click(selector)
    info.value.save_as(dest)
    return dest


def _canvas_pixel(page, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')"
        ".getImageData(x, y, 1, 1).data)",
        [x, y],
    )


def test_page_segments_an_upload_like_the_cli(page, tmp_path):
    page.set_input_files("#file", str(SHAPES))
    page.fill("#prompt", "a red star")
    page.select_option("#config", "embedded")
    page.click("#run")
    page.wait_for_selector("#result[data-state='done']", timeout=180_000)
    assert page.inner_text("#error") == ""

    mask_file = _download(page, "#download-mask", tmp_path / "page_mask.png")
    assert page.get_attribute("#download-mask", "download") == "shapes_a_red_star.png"
    got = Image.open(mask_file)
    assert got.mode == "L" and got.size == (256, 256)
    expected = _cli_mask(tmp_path, SHAPES, "--prompt", "a red star")
    assert expected.any()
    np.testing.assert_array_equal(np.asarray(got), expected)

    # the overlay is drawn: inside the mask the canvas is tinted away from the image's own pixel
    ys, xs = np.nonzero(expected)
    y, x = int(np.median(ys)), int(np.median(xs))
    y, x = (y, x) if expected[y, x] else (int(ys[0]), int(xs[0]))
    src = np.asarray(Image.open(SHAPES).convert("RGB"))[y, x].astype(int)
    shown = np.asarray(_canvas_pixel(page, x, y)[:3])
    np.testing.assert_allclose(shown, (src + np.array([255, 64, 32])) / 2, atol=3)

    # the instances JSON: COCO results entries whose masks make up the downloaded mask
    mask_util = pytest.importorskip("pycocotools.mask", reason="pycocotools (lvlm[bench]) is not installed")
    doc = json.loads(_download(page, "#download-json", tmp_path / "page.json").read_text())
    assert doc["prompt"] == "a red star" and doc["config"] == "embedded"
    assert int(page.inner_text("#ninstances")) == len(doc["instances"]) >= 1
    union = np.zeros(expected.shape, bool)
    for inst in doc["instances"]:
        union |= (
            mask_util.decode(dict(inst["segmentation"], counts=inst["segmentation"]["counts"].encode())) > 0
        )
    np.testing.assert_array_equal(union, expected > 0)
    timings = page.inner_text("#timings")
    assert "prompter" in timings and "segmenter" in timings and "total" in timings


def test_page_box_drawn_on_an_example(page, tmp_path):
    page.select_option("#example", "nuclei_crop.png")
    page.wait_for_function("document.getElementById('status').textContent.includes('256 x 256')")
    page.select_option("#config", "sam/litemedsam_box")
    rect = page.locator("#canvas").bounding_box()
    sx, sy = rect["width"] / 256, rect["height"] / 256
    page.mouse.move(rect["x"] + 123 * sx, rect["y"] + 37 * sy)
    page.mouse.down()
    page.mouse.move(rect["x"] + 135 * sx, rect["y"] + 50 * sy, steps=4)
    page.mouse.move(rect["x"] + 146 * sx, rect["y"] + 64 * sy, steps=4)
    page.mouse.up()
    text = page.inner_text("#prompts-text")
    assert text.startswith("box ")
    box = text.split()[1]
    assert all(abs(a - b) <= 1 for a, b in zip(map(int, box.split(",")), (123, 37, 146, 64)))
    page.click("#run")
    page.wait_for_selector("#result[data-state='done']", timeout=120_000)
    got = np.asarray(Image.open(_download(page, "#download-mask", tmp_path / "box_mask.png")))
    expected = _cli_mask(tmp_path, NUCLEI, "--config", "sam/litemedsam_box", "--box", box)
    assert expected.any()
    np.testing.assert_array_equal(got, expected)


def test_page_shows_a_bad_request(page):
    page.select_option("#example", "shapes.png")
    page.wait_for_function("document.getElementById('status').textContent.includes('256 x 256')")
    page.select_option("#config", "sam/litemedsam_box")
    page.fill("#prompt", "")
    page.click("#run")
    page.wait_for_selector("#result[data-state='error']", state="attached", timeout=30_000)
    assert page.inner_text("#error").startswith("400: empty prompt")
