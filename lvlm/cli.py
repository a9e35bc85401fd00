"""The ``lvlm`` command: segment, list, and the plug-in commands (train, bench, report).

Plug-in commands live in their own modules, named in ``PLUGINS``; each module defines
``add_arguments(parser)`` and ``run(args) -> int``. They are imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import LvlmError

DEFAULT_CONFIG = "embedded"

# command words -> (module, one-line help)
PLUGINS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train", "clip"): ("lvlm.train.clip", "train a domain CLIP (Villarreal et al. III-B)"),
    ("train", "clipseg"): (
        "lvlm.train.clipseg",
        "fine-tune the CLIPSeg decoder (the CLIPSeg drywall report)",
    ),
    ("train", "sam-decoder"): (
        "lvlm.train.sam_decoder_cli",
        "specialise a SAM-architecture mask decoder (Dhungana and Bista)",
    ),
    ("bench",): ("lvlm.bench.runner", "run a cached, resumable benchmark matrix"),
    ("report",): ("lvlm.bench.report", "tables, plots and galleries of a benchmark run"),
    ("serve",): ("lvlm.serve.cli", "HTTP API and browser page on localhost (lvlm[serve]); see docs/serve.md"),
}


def _parse_floats(text: str, n: int, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected {n} comma-separated numbers") from None
    if len(vals) != n:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r}: expected {n} comma-separated numbers, got {len(vals)}"
        )
    return vals


def _box(text: str) -> list[float]:
    return _parse_floats(text, 4, "--box")


def _point(text: str) -> list[float]:
    return _parse_floats(text, 2, "--point")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``lvlm`` argument parser with every subcommand.

    Args:
        argv: the command line, or None.
    """
    parser = argparse.ArgumentParser(
        prog="lvlm",
        description="Zero-shot, text-prompted image segmentation "
        "by composing foundation models (SAM, SAM 2, MedSAM, CLIP, gScoreCAM).",
    )
    parser.add_argument("--version", action="version", version=f"lvlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment images for a text prompt (and/or box / point prompts)")
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    seg.add_argument("--prompt", "-p", help="text prompt, e.g. 'a red triangle' or 'lungs'")
    seg.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG,
        help=f"pipeline config: a YAML file or a packaged config name (default: {DEFAULT_CONFIG})",
    )
    seg.add_argument("--out", "-o", default="lvlm_out", help="output directory (default: lvlm_out)")
    seg.add_argument(
        "--box",
        type=_box,
        action="append",
        metavar="x0,y0,x1,y1",
        help="box prompt in pixels (repeat for several boxes; their masks are combined)",
    )
    seg.add_argument(
        "--point", type=_point, action="append", metavar="x,y", help="foreground point prompt (repeatable)"
    )
    seg.add_argument("--overlay", action="store_true", help="also write {id}_{prompt}_overlay.png")
    seg.add_argument(
        "--instances",
        action="store_true",
        help="also write every instance as {id}_{prompt}.json (COCO results: RLE masks, boxes, scores); "
        "an everything-mode config without a selector then runs with no prompt ({id}_everything.json)",
    )
    seg.add_argument("--device", help="override the device of every stage (cpu, cuda, cuda:1)")
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument(
        "kind",
        nargs="?",
        help="one kind (generator, segmenter, selector, prompter, combine, clip, saliency, crf, dataset)",
    )

    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (module, help_) in PLUGINS.items():
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="WHAT")
            p = groups[words[0]].add_parser(words[1], help=help_)
        p.set_defaults(plugin=module)
        if argv is not None and list(argv[: len(words)]) == list(words):
            try:  # only the plug-in being run is imported
                importlib.import_module(module).add_arguments(p)
            except ImportError as exc:
                p.set_defaults(plugin_error=f"{' '.join(words)} is not available: {exc}")
    return parser


def _cmd_list(args) -> int:
    from .registry import KINDS, entries, load_errors

    if args.kind and args.kind not in KINDS:
        raise LvlmError(f"unknown kind {args.kind!r}; valid kinds: {', '.join(KINDS)}")
    current = None
    for e in entries(args.kind):
        if e.kind != current:
            current = e.kind
            print(f"\n{e.kind}: {KINDS[e.kind]}")
        src = f"  [{e.source}]" if e.source else ""
        print(f"  {e.name:<24} {e.description}{src}")
    for mod, err in load_errors().items():
        print(f"\n(not loaded: {mod}: {err})", file=sys.stderr)
    return 0


def _takes_device(kind: str, name: str) -> bool:
    """Whether the registered component ``(kind, name)`` has a ``device`` constructor argument."""
    from .registry import KINDS, check_kwargs, get

    if kind not in KINDS:
        return False
    try:
        check_kwargs(get(kind, name).obj, {"device": "cpu"}, where="")
    except LvlmError:  # unknown name (reported when the pipeline is built) or no device argument
        return False
    return True


def _override_device(cfg: dict, device: str) -> dict:
    """The config with ``device`` set on every stage that takes one."""
    out = {}
    for key, val in cfg.items():
        if isinstance(val, dict) and "name" in val and _takes_device(key, val["name"]):
            val = {**val, "device": device}
        out[key] = val
    return out


def _cmd_segment(args) -> int:
    import numpy as np

    from .fsutil import atomic_write_json
    from .io import image_id, load_image, mask_filename, save_mask, save_overlay, slug
    from .pipeline import EmptyMaskWarning, Pipeline, check_text, load_config

    check_text(args.prompt)
    cfg = load_config(args.config)
    if args.device:
        cfg = _override_device(cfg, args.device)
    if args.instances and cfg.get("combine") is None and cfg.get("selector") is None:
        cfg["combine"] = "instances"  # every candidate (every box's mask, every everything-mode mask)
    elif cfg.get("generator") is not None and cfg.get("selector") is None and cfg.get("combine") is None:
        raise LvlmError(
            f"config {args.config!r} is everything mode without a selector: give --instances to write "
            "every object it finds, or use a config with a selector to pick the mask for a text prompt"
        )
    pipe = Pipeline.from_config(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    boxes = np.asarray(args.box, np.float32) if args.box else None
    points = np.asarray(args.point, np.float32) if args.point else None
    everything = args.prompt is None and boxes is None and points is None
    if everything and not pipe.takes_no_prompt:
        raise LvlmError(
            "give --prompt TEXT (or --box / --point for a prompted segmenter"
            + (
                ", or --instances for every object of an everything-mode config)"
                if pipe.generator is not None and pipe.selector is None
                else ")"
            )
        )
    prompt_slug = "everything" if everything else (slug(args.prompt) if args.prompt else "mask")
    failures = 0
    seen: dict[str, int] = {}
    from tqdm.auto import tqdm

    for i, path in enumerate(
        tqdm(args.images, desc="segmenting", unit="img", disable=args.quiet or len(args.images) < 2)
    ):
        ident = image_id(path, i)
        if ident in seen:  # two inputs with the same stem
            seen[ident] += 1
            ident = f"{ident}-{seen[ident]}"
        else:
            seen[ident] = 0
        try:
            img = load_image(path)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", EmptyMaskWarning)
                res = pipe(img, args.prompt, box=boxes, point=points)
            for w in caught:
                if issubclass(w.category, EmptyMaskWarning):
                    print(f"warning: {path}: {w.message}", file=sys.stderr)
            name = mask_filename(ident, args.prompt, prompt_slug)
            save_mask(out / name, res.mask)
            if args.overlay:
                pb = res.prompts.boxes if res.prompts is not None else None
                pp = res.prompts.points if res.prompts is not None else None
                save_overlay(out / name.replace(".png", "_overlay.png"), img, res.mask, boxes=pb, points=pp)
            written = [name]
            if args.instances:
                coco = res.to_coco(ident)
                atomic_write_json(out / name.replace(".png", ".json"), coco, indent=None)
                written.append(f"{name.replace('.png', '.json')} ({len(coco)} instances)")
            if not args.quiet:
                print(
                    f"{path} -> {', '.join(str(out / n) for n in written)}  (area {int(res.mask.sum())} px, "
                    f"score {res.score:.3f}, {res.timings.get('total', 0):.2f} s)"
                )
        except LvlmError as exc:
            failures += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``lvlm`` command line; returns the exit status (errors: one line on stderr, non-zero).

    Args:
        argv: the arguments (without the program name), or None for ``sys.argv[1:]``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "segment":
            return _cmd_segment(args)
        if args.command == "list":
            return _cmd_list(args)
        module = getattr(args, "plugin", None)
        if module is None:
            parser.parse_args([args.command, "--help"])
            return 2
        if getattr(args, "plugin_error", None):
            raise LvlmError(args.plugin_error)
        mod = importlib.import_module(module)
        return int(mod.run(args) or 0)
    except LvlmError as exc:  # a user error (bad config, image, prompt, weights): one line, no traceback
        msg = " ".join(str(exc).split())
        print(f"lvlm: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
