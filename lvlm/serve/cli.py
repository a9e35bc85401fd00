"""``lvlm serve``: the HTTP API and the browser page on uvicorn (a plug-in command of :mod:`lvlm.cli`)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile

from . import DEFAULT_CONFIGS


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lvlm serve``.

    Args:
        p: the subcommand's parser.
    """
    p.add_argument(
        "--config",
        "-c",
        action="append",
        metavar="NAME",
        help="a packaged config name or YAML file to serve (repeatable; default: "
        f"{' and '.join(DEFAULT_CONFIGS)}); the first is the page's default",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=16,
        metavar="N",
        help="most requests queued or running at once; more get 429 (default 16)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        metavar="M",
        help="largest upload in MiB; more get 413 (default 20)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=25_000_000,
        metavar="P",
        help="largest image, width x height; more get 413 (default 25000000)",
    )
    p.add_argument(
        "--preload", action="store_true", help="build every config before serving (default: on first use)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted.

    Args:
        args: the parsed options of :func:`add_arguments`.
    """
    from ..errors import LvlmError
    from ..optional import require

    uvicorn = require("uvicorn", "lvlm serve")
    if args.max_queue < 1:
        raise LvlmError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise LvlmError("--max-upload-mb and --max-pixels must be positive")
    from .app import create_app

    # everything this process writes (uploads being decoded, masks being encoded, the form parser's
    # spooled files) goes to one directory of its own, removed on exit
    tmp = tempfile.mkdtemp(prefix="lvlm-serve-")
    tempfile.tempdir = tmp
    try:
        app = create_app(
            args.config or list(DEFAULT_CONFIGS),
            max_queue=args.max_queue,
            max_upload_mb=args.max_upload_mb,
            max_pixels=args.max_pixels,
            tmp_dir=tmp,
        )
        if args.preload:
            for name, slot in app.state.pool.slots.items():
                print(f"building {name} ...", file=sys.stderr, flush=True)
                slot.get_pipeline()
        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
        print(
            f"lvlm serve: http://{args.host}:{args.port}/  (configs: {', '.join(app.state.pool.slots)})",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
