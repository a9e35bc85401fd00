"""The HTTP API and the browser page of ``lvlm serve`` (FastAPI on uvicorn).

Routes:

- ``GET /``: the page (``static/index.html``): upload or pick an example, prompt, box / points, run.
- ``POST /api/segment``: multipart ``image`` (file), ``prompt``, ``box`` (``x0,y0,x1,y1``, repeatable),
  ``point`` (``x,y``, repeatable), ``config``, ``format`` (``png`` | ``json``). ``png`` answers the 0/255
  single-channel mask at the input size, written by :func:`lvlm.io.save_mask` as ``lvlm segment`` writes
  it; ``json`` answers the mask as COCO RLE (:func:`lvlm.rle.encode`), the score, the timings and the
  instances.
- ``GET /api/configs``, ``GET /api/examples``, ``GET /examples/{name}``, ``GET /healthz``.

Errors are JSON ``{"error": "<one line>"}``: 400 for a bad image, config, box, point, prompt or form;
413 over the byte or pixel limit (the message names it); 429 when the queue is full; 500 for a failure
inside a model (the server keeps serving).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, LvlmError
from ..io import image_id, load_image, mask_filename, save_mask
from ..optional import require
from ..pipeline import load_config
from . import DEFAULT_CONFIGS
from .worker import Job, ModelPool, QueueFull

require("fastapi", "lvlm serve")
require("python_multipart", "lvlm serve")  # python-multipart, for FastAPI's form parsing

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException

log = logging.getLogger("lvlm.serve")

DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 25_000_000
STATIC_DIR = Path(__file__).parent / "static"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_FORM_OVERHEAD = 64 * 1024  # the non-file fields of a form, on top of the upload limit
_MAX_PROMPTS = 256  # boxes or points in one request
_DISCONNECT_POLL_S = 0.25


class HTTPError(Exception):
    """A request rejected with ``status`` and a one-line ``message``.

    Args:
        status: HTTP status code.
        message: what was wrong, on one line.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def config_info(name: str) -> dict[str, Any]:
    """What the page needs to know about a packaged config without building it.

    Args:
        name: a packaged config name or YAML path.
    """
    cfg = load_config(name)
    seg = cfg.get("segmenter") or {}
    seg_name = seg.get("name") if isinstance(seg, dict) else None
    text = bool(cfg.get("prompter") or cfg.get("selector") or seg_name == "clipseg")
    return {
        "name": name,
        "description": " ".join(str(cfg.get("description", "")).split()),
        "text": text,
        "geometry": bool(cfg.get("segmenter")),
        "needs_text": text and not cfg.get("segmenter"),
    }


def _parse_numbers(text: str, n: int, what: str) -> list[float]:
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        vals = []
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        fmt = "x0,y0,x1,y1" if n == 4 else "x,y"
        raise HTTPError(400, f"malformed {what} {text!r}: expected {n} comma-separated numbers ({fmt})")
    return vals


def parse_boxes(values: list[str]) -> np.ndarray | None:
    """``["x0,y0,x1,y1", ...]`` -> K x 4 float32 (None when empty); malformed -> HTTPError 400.

    Args:
        values: the form's ``box`` fields.
    """
    values = [v for v in values if v.strip()]
    if not values:
        return None
    if len(values) > _MAX_PROMPTS:
        raise HTTPError(400, f"{len(values)} boxes: at most {_MAX_PROMPTS} per request")
    boxes = np.asarray([_parse_numbers(v, 4, "box") for v in values], np.float32)
    for b in boxes:
        if b[2] <= b[0] or b[3] <= b[1]:
            raise HTTPError(400, f"box {b.tolist()} is empty: need x0 < x1 and y0 < y1 (xyxy order)")
    return boxes


def parse_points(values: list[str]) -> np.ndarray | None:
    """``["x,y", ...]`` -> P x 2 float32 (None when empty); malformed -> HTTPError 400.

    Args:
        values: the form's ``point`` fields.
    """
    values = [v for v in values if v.strip()]
    if not values:
        return None
    if len(values) > _MAX_PROMPTS:
        raise HTTPError(400, f"{len(values)} points: at most {_MAX_PROMPTS} per request")
    return np.asarray([_parse_numbers(v, 2, "point") for v in values], np.float32)


def _json_number(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _instances(res: Any, ident: str) -> tuple[list[dict], str]:
    """COCO-style instances of a result: ``Result.to_coco`` where it exists, else its candidates."""
    from ..rle import encode

    to_coco = getattr(res, "to_coco", None)
    if callable(to_coco):
        return json.loads(json.dumps(to_coco(ident), default=_json_default)), "instances"
    cands = res.candidates
    out = []
    for i in range(len(cands)):
        x0, y0, x1, y1 = (float(v) for v in cands.boxes[i])
        out.append(
            {
                "image_id": ident,
                "category_id": 1,
                "segmentation": encode(cands.masks[i]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": int(cands.masks[i].sum()),
                "score": _json_number(cands.scores[i]),
            }
        )
    return out, "candidates"


def _finite(o: Any) -> Any:
    """JSON-safe: NaN and infinities (a score of nothing) become null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("ascii")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def create_app(
    configs: list[str] | tuple[str, ...] = DEFAULT_CONFIGS,
    *,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pipeline_factory: Callable[[str], Any] | None = None,
    tmp_dir: str | None = None,
) -> FastAPI:
    """The FastAPI app serving ``configs``.

    Args:
        configs: packaged config names (or YAML paths) to serve; the first is the page's default.
        max_queue: most requests queued or running at once; more get 429.
        max_upload_mb: largest request body in MiB; more get 413.
        max_pixels: largest image in pixels (width x height); more get 413.
        pipeline_factory: ``factory(name) -> pipeline``, called once per config on its first request
            (default :meth:`lvlm.Pipeline.from_config`).
        tmp_dir: where decoded uploads and masks are written for the moment they exist (default: a new
            directory under the system temp dir, removed at shutdown).

    Raises:
        ConfigError: a config that does not exist (before anything is served).
    """
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise LvlmError("give at least one config to serve")
    infos = {name: config_info(name) for name in configs}  # unknown configs fail here, at start
    if pipeline_factory is None:
        from ..pipeline import Pipeline

        pipeline_factory = Pipeline.from_config
    max_bytes = int(max_upload_mb * 1024 * 1024)
    max_pixels = int(max_pixels)
    pool = ModelPool(configs, pipeline_factory, max_queue=max_queue)
    own_tmp = tmp_dir is None
    tmp = Path(tempfile.mkdtemp(prefix="lvlm-serve-") if own_tmp else tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            pool.close()
            if own_tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    app = FastAPI(
        title="lvlm serve",
        version=_version(),
        lifespan=lifespan,
        summary="Zero-shot text-prompted image segmentation",
    )
    app.state.pool = pool
    app.state.tmp_dir = tmp
    app.state.limits = {"max_queue": pool.max_queue, "max_upload_bytes": max_bytes, "max_pixels": max_pixels}

    @app.exception_handler(HTTPError)
    async def _http_error(_request: Request, exc: HTTPError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", **pool.status()}

    @app.get("/api/configs")
    async def api_configs() -> dict:
        st = pool.status()["configs"]
        return {
            "default": configs[0],
            "limits": app.state.limits,
            "configs": [{**infos[n], "loaded": st[n]["loaded"]} for n in configs],
        }

    def examples() -> dict[str, Path]:
        return {p.name: p for p in sorted(EXAMPLES_DIR.glob("*")) if p.suffix.lower() in EXAMPLE_SUFFIXES}

    @app.get("/api/examples")
    async def api_examples() -> dict:
        return {"examples": list(examples())}

    @app.get("/examples/{name}", include_in_schema=False)
    async def example(name: str) -> Response:
        ex = examples()
        if name not in ex:  # only the listed files, never a path
            return _error(404, f"no example {name!r}; examples: {', '.join(ex)}")
        return FileResponse(ex[name])

    async def read_body(request: Request) -> bytes:
        limit = max_bytes + _FORM_OVERHEAD
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, _too_large(int(declared), max_bytes, max_upload_mb))
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise HTTPError(413, _too_large(n, max_bytes, max_upload_mb, at_least=True))
            chunks.append(chunk)
        return b"".join(chunks)

    def decode(data: bytes, filename: str) -> np.ndarray:
        """Upload bytes -> RGB array through lvlm.io.load_image (what the CLI reads files with)."""
        from PIL import Image, UnidentifiedImageError

        if len(data) > max_bytes:
            raise HTTPError(413, _too_large(len(data), max_bytes, max_upload_mb))
        if not data:
            raise HTTPError(400, "image: the uploaded file is empty (0 bytes)")
        try:  # the header alone: refuse a huge image before decoding it
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            w = h = None  # let load_image report it (or read it with tifffile)
        except Image.DecompressionBombError:
            w = h = max_pixels + 1
        if w is not None and h is not None and w * h > max_pixels:
            raise HTTPError(
                413,
                f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} pixels; "
                "raise it with lvlm serve --max-pixels",
            )
        suffix = Path(filename).suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
            suffix = ".img"
        path = tmp / f"upload-{uuid.uuid4().hex}{suffix}"
        try:
            path.write_bytes(data)
            try:
                img = load_image(path)
            except ImageError as exc:
                msg = str(exc).replace(str(path), "image")
                if "over the limit" in msg:
                    raise HTTPError(413, msg) from None
                raise HTTPError(400, msg) from None
        finally:
            path.unlink(missing_ok=True)
        if img.shape[0] * img.shape[1] > max_pixels:
            raise HTTPError(
                413,
                f"image is {img.shape[1]}x{img.shape[0]} = {img.shape[0] * img.shape[1]:,} "
                f"pixels, over the limit of {max_pixels:,} pixels",
            )
        return img

    def mask_png(mask: np.ndarray) -> bytes:
        path = tmp / f"mask-{uuid.uuid4().hex}.png"
        try:
            save_mask(path, mask)  # the CLI's writer: same pixels as `lvlm segment`
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    @app.post("/api/segment")
    async def segment(request: Request) -> Response:
        pending_body = [await read_body(request)]

        async def replay() -> dict:  # the body once, then nothing more (it is not kept)
            body = pending_body.pop() if pending_body else b""
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=2 * _MAX_PROMPTS + 8)
        except MultiPartException as exc:
            raise HTTPError(400, f"malformed multipart form: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a form the parser cannot read is the client's error
            raise HTTPError(400, f"malformed form: {exc}") from None
        try:
            config = str(form.get("config") or configs[0])
            if config not in infos:
                raise HTTPError(400, f"unknown config {config!r}; served configs: {', '.join(configs)}")
            fmt = str(form.get("format") or "png").lower()
            if fmt not in ("png", "json"):
                raise HTTPError(400, f"format {fmt!r}: expected png or json")
            boxes = parse_boxes([str(v) for v in form.getlist("box")])
            points = parse_points([str(v) for v in form.getlist("point")])
            if boxes is not None and points is not None and len(boxes) > 1:
                raise HTTPError(400, f"{len(boxes)} boxes and points: points go with one box at most")
            prompt = " ".join(str(form.get("prompt") or "").split()) or None
            if prompt is None and boxes is None and points is None:
                raise HTTPError(
                    400, "empty prompt: give a text prompt (or a box / point for a prompted config)"
                )
            if prompt is None and infos[config]["needs_text"]:
                raise HTTPError(400, f"config {config!r} is text-prompted: give a text prompt")
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPError(400, "no image: send the image as a file field named 'image'")
            filename = upload.filename or "image"
            data = await upload.read()
        finally:
            await form.close()
        img = await run_in_threadpool(decode, data, filename)
        del data
        if await request.is_disconnected():
            return Response(status_code=499)
        try:
            future = pool.submit(Job(config, img, prompt, boxes, points))
        except QueueFull as exc:
            raise HTTPError(429, str(exc)) from None
        waiter = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=_DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                future.cancel()  # skipped by the worker if still queued
                log.info("client went away; job %s", "cancelled" if future.cancelled() else "left to finish")
                return Response(status_code=499)
        try:
            res, info = waiter.result()
        except LvlmError as exc:
            raise HTTPError(400, str(exc)) from None
        except ValueError as exc:  # e.g. prompts that do not fit together
            raise HTTPError(400, str(exc)) from None
        except Exception as exc:  # the server keeps serving
            log.exception("config %s failed", config)
            raise HTTPError(500, f"{type(exc).__name__}: {exc}") from None
        timings = {k: round(float(v), 4) for k, v in res.timings.items()}
        timings["queue"] = round(info["queue"], 4)
        timings["build"] = round(info["build"], 4)
        ident = image_id(filename)
        png = await run_in_threadpool(mask_png, res.mask)
        if fmt == "png":
            name = mask_filename(ident, prompt)
            return Response(
                png,
                media_type="image/png",
                headers={
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "X-Lvlm-Score": str(_json_number(res.score)),
                    "X-Lvlm-Area": str(int(res.mask.sum())),
                    "X-Lvlm-Timings": json.dumps(timings),
                },
            )
        from ..rle import encode

        instances, kind = await run_in_threadpool(_instances, res, ident)
        out: dict[str, Any] = {
            "image_id": ident,
            "config": config,
            "prompt": prompt,
            "height": int(res.mask.shape[0]),
            "width": int(res.mask.shape[1]),
            "mask": encode(res.mask),
            "area": int(res.mask.sum()),
            "empty": bool(res.empty),
            "score": _json_number(res.score),
            "timings": timings,
            "n_candidates": len(res.candidates),
            "instances_from": kind,
            "instances": instances,
            "prompts": _prompts_json(res.prompts),
            "mask_filename": mask_filename(ident, prompt),
        }
        if str(form.get("include_png") or "").lower() in ("1", "true", "yes", "on"):
            out["mask_png"] = base64.b64encode(png).decode("ascii")
        return JSONResponse(_finite(out))

    return app


def _prompts_json(prompts: Any) -> dict | None:
    if prompts is None:
        return None
    return {
        "boxes": None if prompts.boxes is None else np.asarray(prompts.boxes).round(2).tolist(),
        "points": None if prompts.points is None else np.asarray(prompts.points).round(2).tolist(),
    }


def _too_large(n: int, limit: int, mb: float, at_least: bool = False) -> str:
    return (
        f"upload of {'over ' if at_least else ''}{n:,} bytes is over the limit of {mb:g} MB "
        f"({limit:,} bytes); raise it with lvlm serve --max-upload-mb"
    )


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["DEFAULT_CONFIGS", "HTTPError", "config_info", "create_app", "parse_boxes", "parse_points"]
