"""lvlm serve's HTTP API: PNG / JSON answers against the CLI and pycocotools, 400 / 413 / 429, queueing."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="lvlm[serve] (fastapi) is not installed")
pytest.importorskip("python_multipart", reason="lvlm[serve] (python-multipart) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="lvlm[serve] (uvicorn) is not installed")

from fastapi.testclient import TestClient

from lvlm.cli import main
from lvlm.serve.app import create_app
from lvlm.types import Candidates, Result

EXAMPLES = Path(__file__).resolve().parents[1] / "lvlm" / "assets" / "examples"
SHAPES = EXAMPLES / "shapes.png"
NUCLEI = EXAMPLES / "nuclei_crop.png"
NUCLEI_BOX = "123,37,146,64"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, data: dict | list, image: bytes | None = None, name: str = "img.png"):
    files = {"image": (name, image, "image/png")} if image is not None else None
    return client.post("/api/segment", data=data, files=files)


class FakePipeline:
    """A pipeline that fills the box (or a fixed square), optionally waiting on a gate; counts overlap."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.prompts: list[str | None] = []
        self._lock = threading.Lock()

    def __call__(self, image, prompt=None, box=None, point=None):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls += 1
            self.prompts.append(prompt)
        try:
            if self.gate is not None:
                assert self.gate.wait(20), "test gate never opened"
            else:
                time.sleep(0.02)
            if prompt == "boom":
                raise RuntimeError("the model broke")
            mask = np.zeros(image.shape[:2], bool)
            if prompt == "nothing":  # a prompt that matches nothing: empty mask, no score
                return Result(
                    mask=mask, score=float("nan"), prompt=prompt, candidates=Candidates.empty(*mask.shape)
                )
            x0, y0, x1, y1 = (int(v) for v in (box[0] if box is not None else (2, 3, 9, 7)))
            mask[y0:y1, x0:x1] = True
            return Result(
                mask=mask,
                score=0.5,
                prompt=prompt,
                candidates=Candidates(mask[None]),
                timings={"segmenter": 0.01, "total": 0.01},
            )
        finally:
            with self._lock:
                self.active -= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The app on a real uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            assert time.time() - t0 < 20, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# --- the real LiteMedSAM box config, against the CLI and pycocotools ---------------------------------


@pytest.fixture(scope="module")
def real_client(tmp_path_factory):
    app = create_app(["sam/litemedsam_box"], tmp_dir=str(tmp_path_factory.mktemp("serve_tmp")))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def cli_mask(tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("cli_out")
    assert (
        main(
            [
                "segment",
                str(NUCLEI),
                "--config",
                "sam/litemedsam_box",
                "--box",
                NUCLEI_BOX,
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return np.asarray(Image.open(out / "nuclei_crop_mask.png"))


def test_png_is_the_cli_mask(real_client, cli_mask):
    r = _post(
        real_client,
        {"config": "sam/litemedsam_box", "box": NUCLEI_BOX},
        NUCLEI.read_bytes(),
        "nuclei_crop.png",
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert 'filename="nuclei_crop_mask.png"' in r.headers["content-disposition"]
    got = Image.open(io.BytesIO(r.content))
    assert got.mode == "L" and got.size == Image.open(NUCLEI).size
    arr = np.asarray(got)
    assert set(np.unique(arr)) <= {0, 255} and arr.any()
    np.testing.assert_array_equal(arr, cli_mask)


def test_json_rle_decodes_to_the_png_mask(real_client, cli_mask):
    mask_util = pytest.importorskip("pycocotools.mask", reason="pycocotools (lvlm[bench]) is not installed")
    r = _post(
        real_client,
        {"config": "sam/litemedsam_box", "box": NUCLEI_BOX, "format": "json"},
        NUCLEI.read_bytes(),
        "nuclei_crop.png",
    )
    assert r.status_code == 200, r.text
    j = r.json()
    h, w = cli_mask.shape
    assert (j["height"], j["width"]) == (h, w) and j["config"] == "sam/litemedsam_box"
    rle = dict(j["mask"], counts=j["mask"]["counts"].encode("ascii"))
    decoded = mask_util.decode(rle).astype(bool)
    np.testing.assert_array_equal(decoded, cli_mask > 0)
    assert j["area"] == int((cli_mask > 0).sum()) == int(mask_util.area(rle))
    assert 0.0 <= j["score"] <= 1.0
    assert {"segmenter", "total", "queue"} <= set(j["timings"])
    assert len(j["instances"]) >= 1
    union = np.zeros((h, w), bool)
    for inst in j["instances"]:
        seg = dict(inst["segmentation"], counts=inst["segmentation"]["counts"].encode("ascii"))
        m = mask_util.decode(seg).astype(bool)
        union |= m
        np.testing.assert_allclose(inst["bbox"], mask_util.toBbox(seg), atol=1e-6)
    np.testing.assert_array_equal(union, cli_mask > 0)
    assert j["prompts"]["boxes"] == [[123.0, 37.0, 146.0, 64.0]]


def test_configs_and_healthz(real_client):
    j = real_client.get("/api/configs").json()
    assert j["default"] == "sam/litemedsam_box"
    assert [c["name"] for c in j["configs"]] == ["sam/litemedsam_box"]
    assert j["configs"][0]["geometry"] and not j["configs"][0]["needs_text"]
    assert j["limits"]["max_pixels"] > 0
    h = real_client.get("/healthz").json()
    assert h["status"] == "ok" and h["pending"] == 0
    page = real_client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "api/segment" in page.text
    assert real_client.get("/api/examples").json()["examples"] == ["nuclei_crop.png", "shapes.png"]
    assert real_client.get("/examples/shapes.png").content == SHAPES.read_bytes()
    assert real_client.get("/examples/..%2F..%2Fcli.py").status_code == 404


def test_box_outside_the_image_is_400(real_client):
    r = _post(real_client, {"config": "sam/litemedsam_box", "box": "500,500,520,520"}, NUCLEI.read_bytes())
    assert r.status_code == 400
    assert "lies outside the" in r.json()["error"]
    assert real_client.get("/healthz").json()["pending"] == 0


# --- errors, limits and the queue with a fake pipeline -------------------------------------------------


@pytest.fixture
def fake(tmp_path):
    pipe = FakePipeline()
    tmp = tmp_path / "server_tmp"
    app = create_app(
        ["embedded", "sam/litemedsam_box"],
        max_upload_mb=0.05,
        max_pixels=200 * 200,
        pipeline_factory=lambda name: pipe,
        tmp_dir=str(tmp),
    )
    with TestClient(app) as client:
        yield client, pipe, tmp


IMG = np.full((40, 50, 3), 120, np.uint8)


@pytest.mark.parametrize(
    "data,image,expect",
    [
        ({"prompt": "a star"}, b"\x89PNG\r\n\x1a\n not really a png", "not an image file"),
        ({"prompt": "a star"}, b"", "empty"),
        ({"prompt": "a star", "box": "1,2,3"}, _png(IMG), "malformed box '1,2,3'"),
        ({"prompt": "a star", "box": "1,2,x,4"}, _png(IMG), "malformed box"),
        ({"prompt": "a star", "box": "9,2,3,4"}, _png(IMG), "is empty"),
        ({"prompt": "a star", "point": "1"}, _png(IMG), "malformed point"),
        (
            {"prompt": "a star", "config": "sam/nope"},
            _png(IMG),
            "served configs: embedded, sam/litemedsam_box",
        ),
        ({"prompt": "   "}, _png(IMG), "empty prompt"),
        ({}, _png(IMG), "empty prompt"),
        ({"prompt": "a star", "format": "gif"}, _png(IMG), "format 'gif'"),
        ({"prompt": "a star"}, None, "no image"),
    ],
)
def test_bad_requests_get_400_and_the_server_goes_on(fake, data, image, expect):
    client, pipe, tmp = fake
    r = _post(client, data, image)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert expect in msg and "\n" not in msg
    assert str(tmp) not in msg  # the server's temp path is not shown
    assert pipe.calls == 0
    ok = _post(client, {"prompt": "a star"}, _png(IMG))
    assert ok.status_code == 200
    assert list(tmp.iterdir()) == []  # nothing left behind


def test_model_failure_is_500_and_the_server_goes_on(fake):
    client, _, _ = fake
    r = _post(client, {"prompt": "boom"}, _png(IMG))
    assert r.status_code == 500 and "the model broke" in r.json()["error"]
    assert _post(client, {"prompt": "a star"}, _png(IMG)).status_code == 200


def test_a_prompt_matching_nothing_is_an_empty_mask_not_an_error(fake):
    client, _, _ = fake
    j = _post(client, {"prompt": "nothing", "format": "json"}, _png(IMG)).json()
    assert j["empty"] is True and j["score"] is None and j["area"] == 0 and j["instances"] == []
    r = _post(client, {"prompt": "nothing"}, _png(IMG))
    assert r.status_code == 200 and not np.asarray(Image.open(io.BytesIO(r.content))).any()


def test_upload_over_the_byte_limit_is_413(fake):
    client, pipe, _ = fake
    noise = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)  # ~67 KB as PNG
    big = _png(noise)
    assert len(big) > 0.05 * 1024 * 1024
    r = _post(client, {"prompt": "a star"}, big)
    assert r.status_code == 413
    assert "over the limit of 0.05 MB (52,428 bytes)" in r.json()["error"]
    # a body declared too large is refused before it is read
    r = client.post(
        "/api/segment", content=b"x" * 200_000, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413
    assert pipe.calls == 0
    assert _post(client, {"prompt": "a star"}, _png(IMG)).status_code == 200


def test_image_over_the_pixel_limit_is_413(fake):
    client, pipe, _ = fake
    r = _post(
        client, {"prompt": "a star"}, _png(np.zeros((201, 200, 3), np.uint8))
    )  # small file, many pixels
    assert r.status_code == 413
    assert r.json()["error"] == (
        "image is 200x201 = 40,200 pixels, over the limit of 40,000 pixels; "
        "raise it with lvlm serve --max-pixels"
    )
    assert _post(client, {"prompt": "a star"}, _png(np.zeros((200, 200, 3), np.uint8))).status_code == 200
    assert pipe.calls == 1


def test_unknown_config_at_start_lists_the_packaged_ones():
    from lvlm.errors import ConfigError

    with pytest.raises(ConfigError, match="packaged configs: .*embedded"):
        create_app(["no_such_config"])


def _post_async(url: str, results: list, data: dict, timeout: float = 30.0) -> threading.Thread:
    def go():
        try:
            r = httpx.post(
                f"{url}/api/segment",
                data=data,
                files={"image": ("a.png", _png(IMG), "image/png")},
                timeout=timeout,
            )
            results.append(r.status_code)
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _wait(cond, what: str, timeout: float = 20.0) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_full_queue_is_429_and_one_model_runs_one_request_at_a_time(tmp_path):
    gate = threading.Event()
    pipe = FakePipeline(gate)
    app = create_app(["embedded"], max_queue=3, pipeline_factory=lambda name: pipe, tmp_dir=str(tmp_path))
    pool = app.state.pool
    with LiveServer(app) as srv:
        results: list = []
        threads = [_post_async(srv.url, results, {"prompt": f"p{i}"}) for i in range(3)]
        _wait(lambda: pool.pending == 3, "3 queued requests")
        r = httpx.post(
            f"{srv.url}/api/segment",
            data={"prompt": "one too many"},
            files={"image": ("a.png", _png(IMG), "image/png")},
            timeout=10,
        )
        assert r.status_code == 429
        assert "server busy" in r.json()["error"] and "limit 3" in r.json()["error"]
        assert httpx.get(f"{srv.url}/healthz").json()["pending"] == 3  # the server still answers
        gate.set()
        for t in threads:
            t.join(20)
        assert results == [200, 200, 200]
        assert pipe.calls == 3 and pipe.max_active == 1  # serialised through the one model
        assert "one too many" not in pipe.prompts
        r = httpx.post(
            f"{srv.url}/api/segment",
            data={"prompt": "after"},
            files={"image": ("a.png", _png(IMG), "image/png")},
            timeout=10,
        )
        assert r.status_code == 200 and pool.pending == 0


def test_a_client_that_went_away_does_not_block_the_queue(tmp_path):
    gate = threading.Event()
    pipe = FakePipeline(gate)
    app = create_app(["embedded"], max_queue=4, pipeline_factory=lambda name: pipe, tmp_dir=str(tmp_path))
    pool = app.state.pool
    with LiveServer(app) as srv:
        first: list = []
        t1 = _post_async(srv.url, first, {"prompt": "running"})
        _wait(lambda: pipe.calls == 1, "the first request to run")
        gone: list = []
        t2 = _post_async(srv.url, gone, {"prompt": "impatient"}, timeout=1.0)  # gives up while queued
        t2.join(10)
        assert gone == ["ReadTimeout"]
        _wait(lambda: pool.pending == 1, "the abandoned request to leave the queue")
        gate.set()
        t1.join(20)
        assert first == [200]
        r = httpx.post(
            f"{srv.url}/api/segment",
            data={"prompt": "next"},
            files={"image": ("a.png", _png(IMG), "image/png")},
            timeout=10,
        )
        assert r.status_code == 200
        assert pipe.prompts == ["running", "next"]  # the abandoned one never reached the model
        assert pool.skipped == 1


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if lvlm[serve] were not installed
    assert main(["serve", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert 'pip install "lvlm[serve]"' in err and err.count("\n") == 1
