"""Load test of ``lvlm serve``: concurrent clients on loopback, bad uploads mixed in, every answer checked.

Starts ``lvlm serve --config CFG`` as a subprocess on 127.0.0.1 and a free port, sends one warm-up request
(the model is built on first use), then ``--requests`` requests from ``--clients`` threads (each with its
own keep-alive ``httpx.Client``). About ``--bad-fraction`` of them are bad uploads, in turn: corrupt bytes,
a truncated PNG, a malformed box, an image over the pixel limit (a small file of 6000 x 5000 pixels) and an
unknown config. The good ones cycle through 12 variants of the config's example image (the 8 flips /
rotations, 4 brightness shifts: more than the segmenter's embedding cache holds), and each answer must be,
pixel for pixel, the mask ``lvlm segment`` writes for that image (computed first, by the CLI, in this
process).

Reported (``--json``): ``requests``, ``ok`` (good requests answered 200 with the CLI's mask), ``errors``
(answers that are wrong: a good request not answered 200 with the right mask, a bad one not rejected with
a 4xx), ``bad_rejected`` (bad requests answered 4xx), ``lost`` (requests without an answer: connection
error, timeout, or not sent before ``--max-seconds``), ``p50_s`` / ``p95_s`` (latency of the good
requests), ``throughput_rps`` (answers per second of wall time), ``rss_mb_start`` / ``rss_mb_end`` (the
server's resident memory after the warm-up and after the run, from /proc/PID/status) with ``rss_mb_peak``
sampled every 0.5 s and ``rss_mb_trace`` at each quarter of the run.

    python benchmarks/serve_load.py --json
    python benchmarks/serve_load.py --config embedded --requests 60 --clients 4 --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "lvlm" / "assets" / "examples"

# what each config is asked: its example image and its prompt (text, or a box for box-prompted configs)
PLANS = {
    "sam/litemedsam_box": {"image": "nuclei_crop.png", "data": {"box": "120,34,150,68"}},
    "embedded": {"image": "shapes.png", "data": {"prompt": "a red star"}},
}
BAD_KINDS = ("corrupt", "truncated", "malformed_box", "too_many_pixels", "unknown_config")


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def variants(image: np.ndarray) -> list[np.ndarray]:
    """12 distinct images from one: the 8 flips / rotations and 4 brightness shifts.

    Args:
        image: H x W x 3 uint8 RGB.
    """
    out = []
    for k in range(4):
        r = np.rot90(image, k)
        out += [np.ascontiguousarray(r), np.ascontiguousarray(r[:, ::-1])]
    for d in (-24, -12, 12, 24):
        out.append(np.clip(image.astype(np.int16) + d, 0, 255).astype(np.uint8))
    return out


def cli_masks(paths: list[Path], config: str, data: dict, out: Path) -> list[np.ndarray]:
    """The masks ``lvlm segment`` writes for these images (one CLI run for all of them).

    Args:
        paths: image files.
        config: the packaged config.
        data: the request's form fields (``prompt`` and / or ``box``), given to the CLI as options.
        out: the CLI's output directory.
    """
    from PIL import Image

    from lvlm.cli import main

    args = ["segment", *map(str, paths), "--config", config, "--out", str(out), "--quiet"]
    if "prompt" in data:
        args += ["--prompt", data["prompt"]]
    if "box" in data:
        args += ["--box", data["box"]]
    if main(args) != 0:
        raise SystemExit("lvlm segment failed on the reference images")
    from lvlm.io import mask_filename

    return [np.asarray(Image.open(out / mask_filename(p.stem, data.get("prompt")))) for p in paths]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS in /proc/PID/status).

    Args:
        pid: the process id.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="sam/litemedsam_box", choices=sorted(PLANS))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--bad-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server (default 2)")
    ap.add_argument(
        "--max-seconds", type=float, default=900.0, help="stop sending after this long (default 900)"
    )
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument(
        "--variants",
        type=int,
        default=12,
        choices=range(1, 13),
        metavar="1..12",
        help="distinct images the good requests cycle through (default 12; 4 or fewer stay in the "
        "segmenter's embedding cache)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or not 0 <= args.bad_fraction < 1:
        ap.error("--requests and --clients must be >= 1 and --bad-fraction in [0, 1)")
    import httpx

    from lvlm.io import load_image

    plan = PLANS[args.config]
    work = Path(tempfile.mkdtemp(prefix="lvlm-serve-load-"))
    proc = None
    try:
        imgs = variants(load_image(EXAMPLES / plan["image"]))[: args.variants]
        paths = []
        for i, im in enumerate(imgs):
            p = work / f"v{i:02d}.png"
            p.write_bytes(_png(im))
            paths.append(p)
        t0 = time.perf_counter()
        refs = cli_masks(paths, args.config, plan["data"], work / "ref")
        ref_seconds = time.perf_counter() - t0
        uploads = [p.read_bytes() for p in paths]
        big = _png(np.zeros((5000, 6000), np.uint8))  # 30 MP in a small file: over the default pixel limit
        bad_bodies = {
            "corrupt": b"\x89PNG\r\n\x1a\n" + os.urandom(2000),
            "truncated": uploads[0][: len(uploads[0]) // 2],
            "too_many_pixels": big,
        }

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        with open(work / "serve.log", "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lvlm.cli",
                    "serve",
                    "--config",
                    args.config,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--max-queue",
                    str(max(16, 2 * args.clients)),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work,
            )
        t_start = time.time()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"lvlm serve exited:\n{(work / 'serve.log').read_text()}")
            if time.time() - t_start > 120:
                raise SystemExit("lvlm serve did not answer within 120 s")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rss_idle = rss_mb(proc.pid)
        t0 = time.perf_counter()
        r = httpx.post(
            f"{url}/api/segment",
            data=plan["data"],
            files={"image": ("v00.png", uploads[0], "image/png")},
            timeout=args.request_timeout,
        )
        warmup_s = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"warm-up request failed: {r.status_code} {r.text[:300]}")
        rss_start = rss_mb(proc.pid)

        n_bad = round(args.requests * args.bad_fraction)
        bad_at = set(np.linspace(0, args.requests, n_bad, endpoint=False).astype(int) + 3) if n_bad else set()
        bad_at = {i % args.requests for i in bad_at}
        local = threading.local()
        results: list[dict | None] = [None] * args.requests
        deadline = time.perf_counter() + args.max_seconds
        peak = [rss_start]
        trace: list[float] = []
        done_count = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                try:
                    peak[0] = max(peak[0], rss_mb(proc.pid))
                except OSError:
                    return

        def one(i: int) -> None:
            if time.perf_counter() > deadline:
                results[i] = {"kind": "bad" if i in bad_at else "good", "outcome": "lost", "why": "not sent"}
                return
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(timeout=args.request_timeout)
            data, name = dict(plan["data"]), f"v{i % len(uploads):02d}.png"
            body = uploads[i % len(uploads)]
            kind = "good"
            if i in bad_at:
                kind = BAD_KINDS[sorted(bad_at).index(i) % len(BAD_KINDS)]
                body = bad_bodies.get(kind, body)
                if kind == "malformed_box":
                    data["box"] = "1,2,3"
                if kind == "unknown_config":
                    data["config"] = "sam/no_such_config"
            t = time.perf_counter()
            try:
                resp = client.post(
                    f"{url}/api/segment", data=data, files={"image": (name, body, "image/png")}
                )
            except httpx.HTTPError as exc:
                results[i] = {"kind": kind, "outcome": "lost", "why": type(exc).__name__}
                return
            dt = time.perf_counter() - t
            rec = {"kind": kind, "status": resp.status_code, "seconds": dt}
            if kind == "good":
                ok = resp.status_code == 200
                if ok:
                    from PIL import Image

                    got = np.asarray(Image.open(io.BytesIO(resp.content)))
                    ok = got.shape == refs[i % len(refs)].shape and bool((got == refs[i % len(refs)]).all())
                rec["outcome"] = "ok" if ok else "error"
                if not ok:
                    rec["why"] = resp.text[:200] if resp.status_code != 200 else "mask differs from the CLI's"
            else:
                rec["outcome"] = "bad_rejected" if 400 <= resp.status_code < 500 else "error"
                if rec["outcome"] == "error":
                    rec["why"] = f"{resp.status_code} {resp.text[:200]}"
            results[i] = rec
            with lock:
                done_count[0] += 1
                if done_count[0] in {args.requests * q // 4 for q in (1, 2, 3)}:
                    trace.append(round(rss_mb(proc.pid), 1))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as ex:
            list(ex.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        stop.set()
        time.sleep(0.6)
        rss_end = rss_mb(proc.pid)
        health = httpx.get(f"{url}/healthz", timeout=5).json()
        res = [r or {"outcome": "lost", "why": "no record"} for r in results]
        lat = sorted(r["seconds"] for r in res if r["outcome"] == "ok")
        answered = sum(1 for r in res if "status" in r)
        statuses: dict[str, int] = {}
        for r in res:
            if "status" in r:
                statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        out = {
            "config": args.config,
            "requests": args.requests,
            "clients": args.clients,
            "ok": sum(r["outcome"] == "ok" for r in res),
            "errors": sum(r["outcome"] == "error" for r in res),
            "bad_rejected": sum(r["outcome"] == "bad_rejected" for r in res),
            "bad_sent": len(bad_at),
            "lost": sum(r["outcome"] == "lost" for r in res),
            "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": round(lat[min(len(lat) - 1, int(np.ceil(0.95 * len(lat))) - 1)], 3) if lat else None,
            "throughput_rps": round(answered / wall, 2),
            "wall_s": round(wall, 1),
            "rss_mb_idle": round(rss_idle, 1),
            "rss_mb_start": round(rss_start, 1),
            "rss_mb_end": round(rss_end, 1),
            "rss_mb_peak": round(max(peak[0], rss_end), 1),
            "rss_mb_trace": trace,
            "status_counts": statuses,
            "server_pending_after": health["pending"],
            "warmup_s": round(warmup_s, 2),
            "cli_reference_s": round(ref_seconds, 1),
            "variants": len(uploads),
            "server_threads": args.threads,
            "cpus": os.cpu_count(),
            "loadavg_1m_start": round(load0, 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
            "failures": [r for r in res if r["outcome"] in ("error", "lost")][:5],
        }
        print(json.dumps(out, indent=None if args.json else 2))
        return 0 if out["errors"] == 0 and out["lost"] == 0 else 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
