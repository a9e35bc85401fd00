"""CLIPSeg (Lüddecke & Ecker, CVPR 2022) through Hugging Face ``transformers``: loading and preprocessing.

CLIPSeg puts a small transformer decoder on a frozen CLIP ViT-B/16: the decoder reads activations of
three CLIP vision layers, is conditioned on the CLIP text embedding of the prompt (FiLM) and predicts a
logit map. :class:`ClipSegModel` is the adapter the segmenter and the trainer use: the processor's
preprocessing, the cached text conditions, the vision pass, the decoder and the upsampling to the source
resolution.

Weights (all through :mod:`lvlm.weights`):

- ``model``: a Hugging Face id (default ``CIDAS/clipseg-rd64-refined``; ``revision`` pins it), resolved
  in ``$LVLM_HOME/<id>/``, then the Hugging Face cache (``HF_HOME``), then downloaded with
  ``huggingface_hub`` when online (``HF_TOKEN`` for gated or private repos); a local folder written by
  ``save_pretrained``; or ``tiny-random`` (a tiny randomly initialised model for tests and smoke runs).
- ``decoder_checkpoint``: decoder-only weights written by ``lvlm train clipseg``, read with
  :func:`lvlm.weights.load_state_dict` and :func:`lvlm.weights.load_into`, so a bad file is one
  :class:`~lvlm.errors.WeightsError` line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError, WeightsNotFoundError
from ..fsutil import atomic_write

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
TINY_MODEL = "tiny-random"
DECODER_FORMAT = "lvlm-clipseg-decoder"
HF_FILES = ["*.json", "*.txt", "*.safetensors", "*.bin"]  # config, processor / tokenizer files, weights


def hub_url(model_id: str) -> str:
    """The Hugging Face page of a model id.

    Args:
        model_id: the Hugging Face model id.
    """
    from ..weights import hf_page

    return hf_page(model_id)


def load_clipseg(model: str | os.PathLike = DEFAULT_MODEL, revision: str | None = None) -> tuple[Any, Any]:
    """``(CLIPSegForImageSegmentation, CLIPSegProcessor)`` from a hub id, a local folder or ``tiny-random``.

    Order: an existing folder > ``$LVLM_HOME/<hub id>`` > the Hugging Face cache / hub
    (:func:`lvlm.weights.hf_snapshot`). Offline (``LVLM_OFFLINE`` / ``HF_HUB_OFFLINE``, or huggingface.co
    unreachable) a model that is not on disk raises WeightsNotFoundError within seconds, naming the
    model id, the folders looked in and its URL.

    Args:
        model: Hugging Face id, ``save_pretrained`` folder, or ``tiny-random``.
        revision: the hub revision (branch, tag or commit hash) to pin.

    Returns:
        The network (eval mode, CPU) and its processor.
    """
    from ..optional import require
    from ..weights import cache_dir, hf_pretrained, is_hf_repo_id

    tf = require("transformers", "the clipseg segmenter")
    name = str(model)
    if name == TINY_MODEL:
        return tiny_clipseg()
    p = Path(name).expanduser()
    if p.is_dir():
        return _load_dir(tf, p)
    if not is_hf_repo_id(name) or p.is_file():
        raise WeightsNotFoundError(
            f"CLIPSeg model folder {name!r} not found; give a folder written by save_pretrained "
            f"(config.json + model weights + processor files) or a Hugging Face id such as {DEFAULT_MODEL!r}"
        )
    local = cache_dir() / name
    if local.is_dir():
        return _load_dir(tf, local)
    return hf_pretrained(
        lambda folder: _load_dir(tf, Path(folder)),
        name,
        what="CLIPSeg model",
        revision=revision,
        allow_patterns=HF_FILES,
        looked_in=[local],
    )


def _load_dir(tf, path: Path) -> tuple[Any, Any]:
    if not (path / "config.json").is_file():
        raise WeightsNotFoundError(
            f"CLIPSeg model {str(path)!r}: no config.json; expected a folder written by save_pretrained "
            f"(like {hub_url(DEFAULT_MODEL)})"
        )
    from ..weights import read_errors

    try:
        net = tf.CLIPSegForImageSegmentation.from_pretrained(str(path), local_files_only=True)
        proc = tf.CLIPSegProcessor.from_pretrained(str(path), local_files_only=True)
    except read_errors() as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise WeightsError(f"CLIPSeg model {str(path)!r}: cannot load it ({text})") from None
    return net.eval(), proc


def tiny_clipseg(seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """A tiny randomly initialised CLIPSeg (real architecture classes) with an offline tokenizer.

    The tokenizer is :func:`~lvlm.models.clip_base.byte_level_clip_tokenizer` (text split into
    characters, no download). ~80k parameters; the decoder has the same layout as the real one (3
    FiLM-conditioned layers fed by 3 vision layers, complex transposed convolution), logits at half the input
    size.

    Args:
        seed: the seed of the random weights.
        image_size: the model's input side.
    """
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    from .clip_base import byte_level_clip_tokenizer

    tok, vocab = byte_level_clip_tokenizer(model_max_length=32)
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    cfg = CLIPSegConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": vocab[bos],
            "eos_token_id": vocab[eos],
            "pad_token_id": vocab[eos],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
        reduce_dim=16,
        extract_layers=[0, 1, 2],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CLIPSegForImageSegmentation(cfg)
        for m in net.decoder.modules():  # PyTorch's default init: logits of order 1, not saturated
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.reset_parameters()
    ip = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return net.eval(), CLIPSegProcessor(image_processor=ip, tokenizer=tok)


def save_tiny_clipseg(directory: str | os.PathLike, seed: int = 0, image_size: int = 64) -> Path:
    """Write :func:`tiny_clipseg` to ``directory`` (``save_pretrained``), loadable as ``model: DIR``.

    Args:
        directory: the output folder (created).
        seed: the seed of the random weights.
        image_size: the model's input side.
    """
    net, proc = tiny_clipseg(seed, image_size)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(d))
    proc.save_pretrained(str(d))
    return d


def decoder_state(net) -> dict[str, Any]:
    """The trainable part of a CLIPSeg model: ``net.decoder``'s state dict (keys without ``decoder.``).

    Args:
        net: a transformers ``CLIPSegForImageSegmentation``.
    """
    return {k: v.detach().cpu().contiguous() for k, v in net.decoder.state_dict().items()}


def save_decoder(net, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the decoder weights as safetensors, with ``metadata`` (strings) in the header.

    Args:
        net: a transformers ``CLIPSegForImageSegmentation``.
        path: the ``.safetensors`` file to write.
        metadata: header entries (values stored as strings), or None.
    """
    from safetensors.torch import save

    meta = {"format": DECODER_FORMAT}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, save(decoder_state(net), metadata=meta))


def decoder_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a decoder checkpoint written by :func:`save_decoder` (empty for other files).

    Args:
        path: the decoder checkpoint.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return dict(f.metadata() or {})


def load_decoder(net, path: str | os.PathLike) -> dict[str, str]:
    """Load decoder-only weights into ``net`` (strict); returns the checkpoint metadata.

    Accepts our safetensors files, ``lvlm train clipseg``'s ``last.pt`` and full-model state dicts
    (only the ``decoder.*`` keys are used then). A missing, empty, truncated or foreign file, or one
    whose keys or shapes do not fit ``net.decoder``, is one WeightsError line.

    Args:
        net: a ``CLIPSegForImageSegmentation``.
        path: the decoder checkpoint.

    Returns:
        The header metadata (``format``, ``image_size``, ...; empty for files without one).
    """
    from ..weights import load_into, load_state_dict

    what = "CLIPSeg decoder_checkpoint"
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsNotFoundError(f"{what} {str(p)!r}: file not found (write one with `lvlm train clipseg`)")
    sd = load_state_dict(p, what=what)
    load_into(
        net.decoder,
        sd,
        what=what,
        path=p,
        prefix_hint="decoder.",
        hint="a decoder trained for another CLIPSeg model?",
    )
    return decoder_metadata(p)


class ClipSegModel:
    """A CLIPSeg network with its processor: preprocessing, text conditions, vision pass, decoder.

    Args:
        net: a ``CLIPSegForImageSegmentation`` (moved to ``device``, eval mode).
        processor: its ``CLIPSegProcessor``.
        device: torch device string.
        image_size: model input side (default: the processor's).
        name: the model id or folder (for ``repr``).
    """

    text_cache_size = 256

    def __init__(
        self, net: Any, processor: Any, device: str = "cpu", image_size: int | None = None, name: str = ""
    ) -> None:
        self.net = net.to(device).eval()
        self.processor = processor
        self.device = str(device)
        self.image_size = int(image_size) if image_size is not None else None
        self.name = name
        self.extract_layers = list(net.config.extract_layers)
        self._text_cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"ClipSegModel({self.name!r}, image_size={self.image_size}, device={self.device!r})"

    def pixels(self, images: Sequence[np.ndarray]):
        """B x 3 x S x S normalised model input of H x W x 3 uint8 images (the model's own image processor).

        Args:
            images: H x W x 3 uint8 images.
        """
        kw = (
            {} if self.image_size is None else {"size": {"height": self.image_size, "width": self.image_size}}
        )
        out = self.processor.image_processor(images=list(images), return_tensors="pt", **kw)
        return out["pixel_values"].to(self.device)

    def text_embeddings(self, texts: Sequence[str]):
        """K x projection_dim CLIP text embeddings (the decoder's condition), cached per text.

        Args:
            texts: the text conditions.
        """
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            max_len = int(self.net.config.text_config.max_position_embeddings)
            enc = self.processor.tokenizer(
                missing, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            with torch.inference_mode():
                emb = self.net.get_conditional_embeddings(
                    batch_size=len(missing),
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                )
            if len(self._text_cache) > self.text_cache_size:
                self._text_cache.clear()
            for t, e in zip(missing, emb):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def activations(self, image: np.ndarray) -> list:
        """The frozen CLIP vision pass of one image: activations of the decoder's input layers.

        Args:
            image: an H x W x 3 uint8 image.
        """
        import torch

        with torch.inference_mode():
            out = self.net.clip.vision_model(pixel_values=self.pixels([image]), output_hidden_states=True)
        return [out.hidden_states[i + 1] for i in self.extract_layers]

    def decode(self, acts: list, cond):
        """K x s x s decoder logits for K text conditions on one image's activations.

        Args:
            acts: the activations of :meth:`activations`.
            cond: K x projection_dim text embeddings.
        """
        import torch

        k = int(cond.shape[0])
        with torch.inference_mode():
            out = self.net.decoder([a.expand(k, -1, -1) for a in acts], cond).logits
        return out.reshape(k, *out.shape[-2:])

    @staticmethod
    def upsample(logits, size: tuple[int, int]) -> np.ndarray:
        """K x s x s logits -> K x H x W float32 probabilities (bilinear, as the CLIPSeg paper's evaluation).

        Args:
            logits: K x s x s decoder logits.
            size: the output ``(H, W)``.
        """
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            prob = torch.sigmoid(
                F.interpolate(
                    logits[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False
                )[:, 0]
            )
        return prob.cpu().numpy()


def load_clipseg_model(
    model: str | os.PathLike = DEFAULT_MODEL,
    decoder_checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    image_size: int | None = None,
    revision: str | None = None,
) -> tuple[ClipSegModel, dict[str, str]]:
    """A :class:`ClipSegModel` with an optional trained decoder, and the decoder checkpoint's metadata.

    Args:
        model: Hugging Face id, ``save_pretrained`` folder, or ``tiny-random``.
        decoder_checkpoint: decoder-only weights from ``lvlm train clipseg``.
        device: torch device string.
        image_size: model input side (default: the checkpoint's training size, else the processor's).
        revision: hub revision of ``model``.

    Returns:
        ``(model, metadata)``.
    """
    net, proc = load_clipseg(model, revision=revision)
    meta: dict[str, str] = {}
    if decoder_checkpoint is not None:
        meta = load_decoder(net, decoder_checkpoint)
    if image_size is None and meta.get("image_size"):
        image_size = int(meta["image_size"])
    return ClipSegModel(net, proc, device=device, image_size=image_size, name=str(model)), meta
