"""CLIPSeg segmenter: image + text -> mask in one model (Hugging Face ``transformers``).

CLIPSeg (Lüddecke & Ecker, CVPR 2022) puts a small transformer decoder on a frozen CLIP ViT-B/16:
the decoder reads activations of three CLIP vision layers, is conditioned on the CLIP text embedding
of the prompt (FiLM) and predicts a logit map; ``sigmoid(logits) > threshold`` is the mask, after the
logits are upsampled (bilinear) to the source resolution.

Used three ways (see ``docs/clipseg.md``):

- a pipeline on its own: ``segmenter: {name: clipseg}`` (packaged config ``clipseg/clipseg``);
- with box / point prompts (from the user or a prompter): the CLIPSeg mask restricted to each box,
  or to the connected parts of it that hold a prompt's points;
- as a refiner of a pipeline's mask: the ``clipseg_refine`` combiner (``combine: {name: clipseg_refine,
  mode: intersect|union|weighted|overlap}``), or :meth:`ClipSegSegmenter.refine_mask` on any mask.

Weights: a Hugging Face id (default ``CIDAS/clipseg-rd64-refined``), a local directory written by
``save_pretrained``, or ``tiny-random`` (a tiny randomly initialised model for tests and smoke runs),
plus an optional ``decoder_checkpoint`` written by ``lvlm train clipseg``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..components import PromptedSegmenter, resolve_device
from ..errors import ConfigError, LvlmError, PromptError, WeightsNotFoundError
from ..fsutil import atomic_write
from ..registry import register
from ..types import Candidates, Prompts

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
TINY_MODEL = "tiny-random"
HF_HOST = "huggingface.co"
REFINE_MODES = ("intersect", "union", "weighted", "overlap")
DECODER_FORMAT = "lvlm-clipseg-decoder"


# --- loading -----------------------------------------------------------------------------------

def _looks_like_path(model: str) -> bool:
    """Hub ids are ``owner/name``; anything else that names the file system is a path."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def _hub_url(model_id: str) -> str:
    return f"https://huggingface.co/{model_id}"


def load_clipseg(model: str | os.PathLike = DEFAULT_MODEL) -> tuple[Any, Any]:
    """``(CLIPSegForImageSegmentation, CLIPSegProcessor)`` from a hub id, a local directory or ``tiny-random``.

    Order: an existing directory > ``$LVLM_HOME/<hub id>`` > the Hugging Face cache / hub. When
    huggingface.co is unreachable (or ``LVLM_OFFLINE`` / ``HF_HUB_OFFLINE`` is set) only local files
    are used (``local_files_only=True``) and a missing model raises WeightsNotFoundError at once,
    naming the model id and its URL.
    """
    from ..optional import require

    tf = require("transformers", "the clipseg segmenter")
    name = str(model)
    if name == TINY_MODEL:
        return tiny_clipseg()
    p = Path(name).expanduser()
    if p.is_dir():
        return _load_dir(tf, p)
    if _looks_like_path(name) or p.is_file():
        raise WeightsNotFoundError(
            f"CLIPSeg model directory {name!r} not found; give a directory written by save_pretrained "
            f"(config.json + model weights + processor files) or a Hugging Face id such as {DEFAULT_MODEL!r}"
        )
    from ..weights import cache_dir, online

    local = cache_dir() / name
    if local.is_dir():
        return _load_dir(tf, local)
    is_online = online(HF_HOST)
    try:
        net = tf.CLIPSegForImageSegmentation.from_pretrained(name, local_files_only=not is_online)
        proc = tf.CLIPSegProcessor.from_pretrained(name, local_files_only=not is_online)
    except (OSError, ValueError) as exc:
        hub_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface")), "hub")
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        reason = (f"download failed ({type(exc).__name__}: {first})" if is_online else
                  f"{HF_HOST} is unreachable (offline) and it is not in the Hugging Face cache {hub_cache}")
        raise WeightsNotFoundError(
            f"CLIPSeg model {name!r} not found: {reason}. Get it from {_hub_url(name)} "
            f"(e.g. `huggingface-cli download {name}` on a connected machine, or `git clone {_hub_url(name)}` "
            f"and pass model=DIR, or put the directory at {local})"
        ) from None
    return net, proc


def _load_dir(tf, path: Path) -> tuple[Any, Any]:
    if not (path / "config.json").is_file():
        raise WeightsNotFoundError(
            f"{path} has no config.json: expected a CLIPSeg directory written by save_pretrained "
            f"(like {_hub_url(DEFAULT_MODEL)})"
        )
    try:
        net = tf.CLIPSegForImageSegmentation.from_pretrained(str(path), local_files_only=True)
        proc = tf.CLIPSegProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"cannot load a CLIPSeg model from {path}: {exc}") from None
    return net, proc


def tiny_clipseg(seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """A tiny randomly initialised CLIPSeg (real architecture classes) with an offline tokenizer.

    The tokenizer is a CLIP byte-level BPE tokenizer with no merges: its vocabulary is the 256 byte
    symbols (plus their end-of-word forms) and the two special tokens, so text is split into
    characters. ~80k parameters; the decoder has the same layout as the real one (3 FiLM-conditioned
    layers fed by 3 vision layers, complex transposed convolution), logits at half the input size.
    """
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    cfg = CLIPSegConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
                     "bos_token_id": vocab[bos], "eos_token_id": vocab[eos], "pad_token_id": vocab[eos]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
        projection_dim=16, reduce_dim=16, extract_layers=[0, 1, 2], decoder_num_attention_heads=2,
        decoder_intermediate_size=32, use_complex_transposed_convolution=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CLIPSegForImageSegmentation(cfg)
        for m in net.decoder.modules():  # PyTorch's default init: logits of order 1, not saturated
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.reset_parameters()
    ip = ViTImageProcessor(size={"height": image_size, "width": image_size},
                           image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return net.eval(), CLIPSegProcessor(image_processor=ip, tokenizer=tok)


def save_tiny_clipseg(directory: str | os.PathLike, seed: int = 0, image_size: int = 64) -> Path:
    """Write :func:`tiny_clipseg` to ``directory`` (``save_pretrained``), loadable as ``model: DIR``."""
    net, proc = tiny_clipseg(seed, image_size)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(d))
    proc.save_pretrained(str(d))
    return d


def decoder_state(net) -> dict[str, Any]:
    """The trainable part of a CLIPSeg model: ``net.decoder``'s state dict (keys without ``decoder.``)."""
    return {k: v.detach().cpu().contiguous() for k, v in net.decoder.state_dict().items()}


def save_decoder(net, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the decoder weights as safetensors, with ``metadata`` (strings) in the header."""
    from safetensors.torch import save

    meta = {"format": DECODER_FORMAT}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, save(decoder_state(net), metadata=meta))


def decoder_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a decoder checkpoint written by :func:`save_decoder` (empty for other files)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return dict(f.metadata() or {})


def load_decoder(net, path: str | os.PathLike) -> dict[str, str]:
    """Load decoder-only weights into ``net`` (strict); returns the checkpoint metadata.

    Accepts our safetensors files, ``lvlm train clipseg``'s ``last.pt`` and full-model state dicts
    (only the ``decoder.*`` keys are used then).
    """
    from ..weights import load_state_dict

    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"CLIPSeg decoder checkpoint {str(p)!r} not found (write one with `lvlm train clipseg`)")
    sd = load_state_dict(p)
    if any(k.startswith("decoder.") for k in sd):
        sd = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    try:
        net.decoder.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{p}: these decoder weights do not fit this CLIPSeg model "
                          f"({'; '.join(first[:3])[:400]})") from None
    return decoder_metadata(p)


# --- the segmenter ---------------------------------------------------------------------------

@register("segmenter", "clipseg", description="CLIPSeg: image + text -> mask",
          source=_hub_url(DEFAULT_MODEL))
class ClipSegSegmenter(PromptedSegmenter):
    """Text-conditioned segmenter: the CLIPSeg probability map thresholded at the source resolution.

    - ``model``: Hugging Face id, local ``save_pretrained`` directory, or ``tiny-random``
    - ``decoder_checkpoint``: decoder-only weights from ``lvlm train clipseg`` (``best_decoder.safetensors``)
    - ``threshold``: on ``sigmoid(logits)``
    - ``image_size``: model input side (default: the checkpoint's training size, else the processor's, 352)
    - ``refine_mode``: how :meth:`refine_mask` combines a mask with CLIPSeg's: ``intersect`` (both agree),
      ``union``, ``weighted`` (``refine_weight * p + (1 - w) * base > threshold``), ``overlap`` (keep the
      connected parts of the base mask of which at least ``min_overlap`` lies inside the CLIPSeg mask: the
      base's boundaries, CLIPSeg's decision); in a pipeline, the ``clipseg_refine`` combiner calls it
    """

    text_conditioned = True

    def __init__(self, model: str = DEFAULT_MODEL, decoder_checkpoint: str | None = None, threshold: float = 0.5,
                 image_size: int | None = None, device: str = "auto",
                 refine_mode: str = "intersect", refine_weight: float = 0.5, min_overlap: float = 0.5) -> None:
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"clipseg threshold={threshold!r}: must lie strictly between 0 and 1")
        if refine_mode not in REFINE_MODES:
            raise ConfigError(f"clipseg refine_mode={refine_mode!r}; valid values: {', '.join(REFINE_MODES)}")
        if not 0.0 <= float(refine_weight) <= 1.0:
            raise ConfigError(f"clipseg refine_weight={refine_weight!r}: must lie in [0, 1]")
        if image_size is not None and int(image_size) < 8:
            raise ConfigError(f"clipseg image_size={image_size!r}: too small")
        self.model_name = str(model)
        self.threshold = float(threshold)
        self.device = resolve_device(device)
        self.refine_mode = refine_mode
        self.refine_weight = float(refine_weight)
        self.min_overlap = float(min_overlap)
        self._text_cache: dict[str, Any] = {}
        self.model, self.processor = load_clipseg(model)
        self.metadata: dict[str, str] = {}
        if decoder_checkpoint is not None:
            self.metadata = load_decoder(self.model, decoder_checkpoint)
        self.model.to(self.device).eval()
        if image_size is None and self.metadata.get("image_size"):
            image_size = int(self.metadata["image_size"])
        self.image_size = int(image_size) if image_size is not None else None
        self.extract_layers = list(self.model.config.extract_layers)

    # -- tensors ----------------------------------------------------------------------------
    def pixels(self, images: Sequence[np.ndarray]):
        """B x 3 x S x S normalised model input of HxWx3 uint8 images (the model's own image processor)."""
        kw = {} if self.image_size is None else {"size": {"height": self.image_size, "width": self.image_size}}
        out = self.processor.image_processor(images=list(images), return_tensors="pt", **kw)
        return out["pixel_values"].to(self.device)

    def text_embeddings(self, texts: Sequence[str]):
        """K x projection_dim CLIP text embeddings (the decoder's condition), cached per text."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            max_len = int(self.model.config.text_config.max_position_embeddings)
            enc = self.processor.tokenizer(missing, padding=True, truncation=True, max_length=max_len,
                                           return_tensors="pt")
            with torch.inference_mode():
                emb = self.model.get_conditional_embeddings(
                    batch_size=len(missing), input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device))
            if len(self._text_cache) > 256:
                self._text_cache.clear()
            for t, e in zip(missing, emb):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def _embed(self, image: np.ndarray):
        """The frozen CLIP vision pass: activations of the decoder's input layers (one image)."""
        import torch

        with torch.inference_mode():
            out = self.model.clip.vision_model(pixel_values=self.pixels([image]), output_hidden_states=True)
        return [out.hidden_states[i + 1] for i in self.extract_layers]

    def logits(self, image: np.ndarray, texts: Sequence[str]):
        """K x s x s decoder logits of one image for K texts (one vision pass, cached per image)."""
        import torch

        acts = self.embed(image)
        cond = self.text_embeddings(texts)
        k = len(texts)
        with torch.inference_mode():
            out = self.model.decoder([a.expand(k, -1, -1) for a in acts], cond).logits
        return out.reshape(k, *out.shape[-2:])

    def probabilities(self, image: Any, texts: str | Sequence[str]) -> np.ndarray:
        """K x H x W float32 CLIPSeg probabilities at the source resolution (H x W for one text)."""
        import torch
        import torch.nn.functional as F

        from ..io import load_image

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise PromptError("clipseg needs a non-empty text prompt, e.g. 'segment crack'")
        img = load_image(image)
        h, w = img.shape[:2]
        lg = self.logits(img, texts)
        with torch.inference_mode():
            prob = torch.sigmoid(F.interpolate(lg[:, None].float(), size=(h, w), mode="bilinear",
                                               align_corners=False)[:, 0])
        prob = prob.cpu().numpy()
        return prob[0] if single else prob

    # -- segmentation -----------------------------------------------------------------------
    def segment(self, image: np.ndarray, prompts: Prompts) -> Candidates:
        """One mask per box / point prompt (the CLIPSeg mask restricted to it), or one mask for text only."""
        if not prompts.text:
            raise PromptError("clipseg is text-conditioned: give a text prompt (e.g. 'segment crack')")
        h, w = image.shape[:2]
        if prompts.boxes is not None or prompts.points is not None:
            prompts.validate(h, w)
            prompts = prompts.clipped(h, w)
        prob = self.probabilities(image, prompts.text)
        mask = prob > self.threshold
        extra: dict[str, Any] = {"probability": prob}
        masks = restrict_to_prompts(mask, prompts)
        scores = np.array([float(prob[m].mean()) if m.any() else 0.0 for m in masks], np.float32)
        return Candidates(masks, scores=scores, source="clipseg", extra=extra)

    def refine_mask(self, image: Any, text: str, base: np.ndarray, mode: str | None = None) -> np.ndarray:
        """Refine another method's H x W mask (bool, or a [0, 1] probability map) with CLIPSeg for ``text``."""
        from ..io import load_image

        img = load_image(image)
        base = np.asarray(base)
        if base.shape != img.shape[:2]:
            raise LvlmError(f"mask shape {base.shape} != image shape {img.shape[:2]}")
        prob = self.probabilities(img, text)
        return self._combine(prob > self.threshold, prob, base, mode)

    def _combine(self, mask: np.ndarray, prob: np.ndarray, base: np.ndarray, mode: str | None = None) -> np.ndarray:
        mode = mode or self.refine_mode
        if mode not in REFINE_MODES:
            raise ConfigError(f"refine mode {mode!r}; valid values: {', '.join(REFINE_MODES)}")
        soft = base.astype(np.float32)
        hard = base if base.dtype == bool else soft > 0.5
        if mode == "intersect":
            return mask & hard
        if mode == "union":
            return mask | hard
        if mode == "weighted":
            return (self.refine_weight * prob + (1.0 - self.refine_weight) * soft) > self.threshold
        from scipy import ndimage

        labels, n = ndimage.label(hard)
        if n == 0:
            return np.zeros_like(hard)
        inside = np.bincount(labels.ravel(), weights=mask.ravel(), minlength=n + 1)
        size = np.bincount(labels.ravel(), minlength=n + 1)
        keep = inside / np.maximum(size, 1) >= self.min_overlap
        keep[0] = False
        return keep[labels]

    def __repr__(self) -> str:
        return f"ClipSegSegmenter(model={self.model_name!r}, threshold={self.threshold}, device={self.device!r})"


def restrict_to_prompts(mask: np.ndarray, prompts: Prompts) -> np.ndarray:
    """K x H x W: ``mask`` inside each box, and/or its connected parts holding each prompt's foreground points."""
    k = len(prompts) if (prompts.boxes is not None or prompts.points is not None) else 1
    if prompts.boxes is None and prompts.points is None:
        return mask[None]
    h, w = mask.shape
    out = np.repeat(mask[None], k, axis=0)
    if prompts.boxes is not None:
        ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
        for i, (x0, y0, x1, y1) in enumerate(prompts.boxes):
            out[i] &= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if prompts.points is not None:
        from scipy import ndimage

        for i in range(k):
            labels, _ = ndimage.label(out[i])
            pts = prompts.points[i][prompts.point_labels[i] > 0]
            ids = {int(labels[int(y), int(x)]) for x, y in pts} - {0}
            out[i] = np.isin(labels, list(ids)) if ids else False
    return out
