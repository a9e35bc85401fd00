"""``lvlm train sam-decoder``: build the model and the datasets, train, print the summary as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..components import resolve_device
from ..errors import ConfigError
from .sam_decoder import DecoderTrainConfig, train_sam_decoder

MODEL_NAMES = ("sam", "mobilesam", "medsam", "litemedsam")


def build_model(name: str, model_type: str | None = None, checkpoint: Any = "default", device: str = "cpu"):
    """A SAM-architecture model by name: sam (vit_b/l/h), mobilesam, medsam, litemedsam.

    Args:
        name: ``sam``, ``mobilesam``, ``medsam`` or ``litemedsam``.
        model_type: the SAM variant for ``sam`` (``vit_b``, ``vit_l``, ``vit_h``; default ``vit_b``).
        checkpoint: ``default`` (the official weights), a path, or None / ``random`` for random weights.
        device: the device to load on.
    """
    from ..models import sam as sam_models

    if name == "litemedsam":
        return sam_models.build_litemedsam(checkpoint, device)
    if name == "sam":
        return sam_models.build_sam(model_type or "vit_b", checkpoint, device)
    if name in ("mobilesam", "medsam"):
        return sam_models.build_sam(name, checkpoint, device)
    raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")


def _kv(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise ConfigError(f"--data-arg {text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def add_arguments(parser) -> None:
    """Arguments of ``lvlm train sam-decoder``.

    Args:
        parser: the ``argparse`` (sub)parser.
    """
    parser.add_argument(
        "--model", default="litemedsam", choices=MODEL_NAMES, help="model family (default litemedsam)"
    )
    parser.add_argument(
        "--model-type", help="SAM variant for --model sam: vit_b (default), vit_l, vit_h, vit_tiny"
    )
    parser.add_argument(
        "--checkpoint", default="default", help="model weights: 'default' (official), a path, or 'random'"
    )
    parser.add_argument(
        "--dataset", required=True, help="registered dataset of training objects (lvlm list dataset)"
    )
    parser.add_argument("--data-root", help="the dataset's root folder")
    parser.add_argument(
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another constructor argument of the dataset (repeatable), e.g. split=train",
    )
    parser.add_argument(
        "--val-dataset", help="validation dataset (default: hold out --val-fraction of the training set)"
    )
    parser.add_argument("--val-data-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--out", "-o", default="sam_decoder_run", help="run folder (decoder.safetensors, last.pt)"
    )
    parser.add_argument("--config", help="YAML file of training settings (keys of DecoderTrainConfig)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--patience", type=int)
    parser.add_argument(
        "--point-fraction", type=float, help="share of point prompts, the rest boxes (default 0.5)"
    )
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--no-hflip", action="store_true", help="no horizontal-flip augmentation")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cache-dir", help="embedding cache folder (default $LVLM_HOME/embeddings)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--quiet", "-q", action="store_true")


def run(args) -> int:
    """``lvlm train sam-decoder``: build the model and datasets, train, print the summary as JSON.

    Args:
        args: the parsed options of :func:`add_arguments`.
    """
    import yaml

    from ..registry import build

    cfg: dict[str, Any] = {}
    if args.config:
        cfg = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{args.config}: expected a mapping of training settings")
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "patience": args.patience,
        "point_fraction": args.point_fraction,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
    }
    if args.no_hflip:
        overrides["hflip"] = False
    config = DecoderTrainConfig.from_any(cfg, **overrides)

    def dataset(name, extra):
        kwargs = dict(_kv(t) for t in extra)
        if args.data_root and "root" not in kwargs:
            kwargs["root"] = args.data_root
        return build("dataset", name, **kwargs)

    train = dataset(args.dataset, args.data_arg)
    val = dataset(args.val_dataset, args.val_data_arg) if args.val_dataset else None
    device = resolve_device(args.device)
    model = build_model(args.model, args.model_type, args.checkpoint, device)
    name = args.model if args.model != "sam" else (args.model_type or "vit_b")
    res = train_sam_decoder(
        model,
        train,
        val,
        out_dir=args.out,
        config=config,
        cache_dir=args.cache_dir,
        device=device,
        resume=args.resume,
        model_name=name,
        progress=not args.quiet,
    )
    print(json.dumps(res.summary(), indent=1))
    return 0
