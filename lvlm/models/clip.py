"""open_clip CLIP models behind the :class:`~lvlm.models.clip_base.ClipModel` interface.

Presets (kind ``"clip"``) are named after seed 001 Table III (``OA-RN50``, ``OA-ViT-B``, ``CC-RN50``,
``LA-ViT-B``, ``BC-ViT-B``, ...); ``open_clip`` loads any open_clip model name + pretrained tag, an
``hf-hub:`` id, or a checkpoint file (how our own trained FS-/FP- models are loaded); ``tiny-rn`` and
``tiny-vit`` are tiny randomly initialised open_clip models (real architecture classes) for tests.

Weights are looked for in ``$LVLM_HOME`` first; only when they are not there is the network probed
(short timeout) before open_clip's downloader runs, so an offline machine gets a
:class:`~lvlm.errors.WeightsNotFoundError` naming the file, the directory and the URL within seconds.

Every preset takes ``checkpoint``: ``"default"`` (official weights), a file path, or ``null`` /
``"random"`` (the real architecture, randomly initialised: useful offline).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..components import resolve_device
from ..errors import ConfigError, LvlmError, WeightsNotFoundError
from ..registry import register
from .clip_base import ClipModel

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG_FILE = "open_clip_config.json"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

# ------------------------------------------------------------------------------------------------
# Seed 001 Table III: preset name -> open_clip model, pretrained tag, data, licence
# ------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, str]] = {
    "OA-RN50": {"model_name": "RN50", "pretrained": "openai", "backbone": "ResNet-50",
                "data": "OpenAI WIT (400M image-text pairs)", "licence": "MIT"},
    "OA-RN101": {"model_name": "RN101", "pretrained": "openai", "backbone": "ResNet-101",
                 "data": "OpenAI WIT (400M image-text pairs)", "licence": "MIT"},
    "OA-ViT-B": {"model_name": "ViT-B-16", "pretrained": "openai", "backbone": "ViT-B/16",
                 "data": "OpenAI WIT (400M image-text pairs)", "licence": "MIT"},
    "OA-ViT-L": {"model_name": "ViT-L-14", "pretrained": "openai", "backbone": "ViT-L/14",
                 "data": "OpenAI WIT (400M image-text pairs)", "licence": "MIT"},
    "CC-RN50": {"model_name": "RN50", "pretrained": "cc12m", "backbone": "ResNet-50",
                "data": "Conceptual 12M (cc12m)", "licence": "MIT (open_clip weights)"},
    "LA-ViT-B": {"model_name": "ViT-B-16", "pretrained": "laion400m_e32", "backbone": "ViT-B/16",
                 "data": "LAION-400M (32 epochs)", "licence": "MIT (open_clip weights)"},
    "BC-ViT-B": {"model_name": "hf-hub:imageomics/bioclip", "pretrained": "", "backbone": "ViT-B/16",
                 "data": "TreeOfLife-10M (BioCLIP)", "licence": "MIT"},
    "BiomedCLIP": {"model_name": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                   "pretrained": "", "backbone": "ViT-B/16 + PubMedBERT",
                   "data": "PMC-15M (PubMed Central figure-caption pairs)", "licence": "MIT"},
}


def _open_clip():
    from ..optional import require

    return require("open_clip", "CLIP models")


# ------------------------------------------------------------------------------------------------
# The model wrapper
# ------------------------------------------------------------------------------------------------
class OpenClipModel(ClipModel):
    """An open_clip model (``CLIP`` / ``CustomTextCLIP``) with its tokenizer and batched on-device preprocessing."""

    text_cache_size = 4096

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str = "", device: str = "cpu",
                 preprocess_cfg: dict | None = None, model_name: str | None = None,
                 model_cfg: dict | None = None, source: str = "") -> None:
        oc = _open_clip()
        self.name = name
        self.device = str(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.model_name = model_name  # open_clip name when built from one (for save())
        self.model_cfg = model_cfg  # the architecture config dict when built from one (for save())
        self.source = source  # where the weights came from (file path, "random", ...)
        cfg = dict(oc.get_model_preprocess_cfg(model))
        cfg.update(preprocess_cfg or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ConfigError(f"{name}: non-square CLIP input size {size} is not supported")
            size = size[0]
        self.image_size = int(size)
        self.mean = tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN))
        self.std = tuple(float(v) for v in cfg.get("std", OPENAI_STD))
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.fill_color = int(cfg.get("fill_color", 0) or 0)
        self.preprocess_cfg = {"size": self.image_size, "mean": self.mean, "std": self.std,
                               "interpolation": self.interpolation, "resize_mode": self.resize_mode,
                               "fill_color": self.fill_color}
        from open_clip.transformer import VisionTransformer

        visual = model.visual
        self.is_vit = isinstance(visual, VisionTransformer) or _timm_is_transformer(visual)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenClipModel({self.name!r}, image_size={self.image_size}, vit={self.is_vit}, device={self.device!r})"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- preprocessing ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 images -> B x 3 x S x S normalised tensor on ``device`` (open_clip's transform)."""
        if isinstance(images, torch.Tensor) or (isinstance(images, np.ndarray) and images.ndim == 4):
            x = torch.as_tensor(images)
            if x.ndim == 3:
                x = x[None]
            return self.preprocess_chw(x.permute(0, 3, 1, 2).to(self.device))
        if isinstance(images, np.ndarray):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("preprocess: no images")
        shapes = {tuple(np.shape(im)) for im in images}
        if len(shapes) == 1:
            x = torch.from_numpy(np.ascontiguousarray(np.stack([np.asarray(im) for im in images])))
            return self.preprocess_chw(x.permute(0, 3, 1, 2).to(self.device))
        return torch.cat([self.preprocess_chw(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None]
                                              .to(self.device)) for im in images])

    def preprocess_chw(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W uint8 (or 0-255 float) tensor on device -> B x 3 x S x S normalised pixels.

        Resize (shortest side to S, bicubic with antialiasing, rounded to 8 bits as PIL does), centre
        crop and normalise: the same transform as open_clip's PIL preprocessing, batched on device.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected B x 3 x H x W images, got shape {tuple(x.shape)}")
        s = self.image_size
        h, w = x.shape[-2:]
        xf = x.float()
        mode = "bilinear" if self.interpolation == "bilinear" else "bicubic"
        if self.resize_mode == "squash":
            xf = _resize(xf, (s, s), mode)
        elif self.resize_mode == "longest":
            scale = s / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            xf = _resize(xf, (nh, nw), mode)
            pad = (s - nw) // 2, s - nw - (s - nw) // 2, (s - nh) // 2, s - nh - (s - nh) // 2
            xf = F.pad(xf, pad, value=float(self.fill_color))
        else:  # shortest side to s (torchvision's size rule), then centre crop
            if h <= w:
                nh, nw = s, int(s * w / h)
            else:
                nh, nw = int(s * h / w), s
            xf = _resize(xf, (nh, nw), mode)
            top, left = round((nh - s) / 2.0), round((nw - s) / 2.0)
            xf = xf[:, :, top:top + s, left:left + s]
        return self.normalize(xf)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S pixels on the 0-255 scale -> model input (rounded to 8 bits, scaled, normalised)."""
        x = x.round().clamp_(0, 255) / 255.0
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    # --- encoders -----------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.model.encode_image(pixels.to(self.device, self.dtype))
        return F.normalize(feats.float(), dim=-1) if normalize else feats.float()

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
            if missing:
                tokens = self.tokenizer(missing)
                if not isinstance(tokens, torch.Tensor):
                    tokens = torch.as_tensor(tokens)
                with torch.no_grad():
                    feats = self.model.encode_text(tokens.to(self.device)).float()
                for t, f in zip(missing, feats):
                    self._text_cache[t] = f.detach()
            out = torch.stack([self._text_cache[t] for t in texts])
            for t in texts:
                self._text_cache.move_to_end(t)
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return F.normalize(out, dim=-1) if normalize else out

    # --- CAM support --------------------------------------------------------------------------
    def cam_target_layer(self) -> torch.nn.Module:
        visual = self.model.visual
        if hasattr(visual, "layer4"):  # open_clip ModifiedResNet: last conv stage
            return visual.layer4
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            return visual.transformer.resblocks[-1]
        trunk = getattr(visual, "trunk", None)  # timm tower
        if trunk is not None:
            for attr in ("blocks", "stages", "layers"):
                seq = getattr(trunk, attr, None)
                if seq is not None and len(seq):
                    return seq[-1]
            if hasattr(trunk, "layer4"):
                return trunk.layer4
        raise LvlmError(f"{self.name}: no CAM target layer known for image tower {type(visual).__name__}")

    def reshape_transform(self, activations: torch.Tensor) -> torch.Tensor:
        """ViT block output (B x L x C tokens; open_clip 3.x runs batch-first) -> B x C x h x w, class token dropped."""
        if not self.is_vit or activations.ndim != 3:
            return activations
        visual = self.model.visual
        grid = getattr(visual, "grid_size", None)
        if grid is None and hasattr(visual, "trunk") and hasattr(visual.trunk, "patch_embed"):
            grid = visual.trunk.patch_embed.grid_size
        gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
        tokens = activations
        transformer = getattr(visual, "transformer", None)
        if transformer is not None and not getattr(transformer, "batch_first", True):
            tokens = tokens.transpose(0, 1)  # L x B x C (older open_clip) -> B x L x C
        n_prefix = tokens.shape[1] - gh * gw
        if n_prefix < 0:
            raise LvlmError(f"{self.name}: {tokens.shape[1]} tokens do not fit a {gh}x{gw} patch grid")
        tokens = tokens[:, n_prefix:, :]
        return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[2]).permute(0, 3, 1, 2)

    # --- saving (trained models) --------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights (``.safetensors`` or ``.pt``) and a model-config JSON beside them.

        The pair loads back with ``build("clip", "open_clip", checkpoint=path)``.
        """
        return save_open_clip(self.model, path, model_name=self.model_name, model_cfg=self.model_cfg,
                              preprocess_cfg=self.preprocess_cfg)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize in PIL's order: horizontal pass, round to 8 bits, vertical pass (matches PIL to 1 level)."""
    h, w = x.shape[-2:]
    nh, nw = size
    if nw != w:
        x = F.interpolate(x, size=(h, nw), mode=mode, align_corners=False, antialias=True).round().clamp(0, 255)
    if nh != h:
        x = F.interpolate(x, size=(nh, nw), mode=mode, align_corners=False, antialias=True).round().clamp(0, 255)
    return x


def _timm_is_transformer(visual: torch.nn.Module) -> bool:
    trunk = getattr(visual, "trunk", None)
    return trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed")


# ------------------------------------------------------------------------------------------------
# Building models: architecture, weights, tokenizer
# ------------------------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple, Any] = {}


def _tokenizer_for_cfg(model_cfg: dict) -> Any:
    oc = _open_clip()
    text_cfg = model_cfg.get("text_cfg", {}) or {}
    ctx = int(text_cfg.get("context_length", 77))
    hf_name = text_cfg.get("hf_tokenizer_name")
    key = (hf_name, ctx)
    if key not in _TOKENIZERS:
        if hf_name:
            from open_clip.tokenizer import HFTokenizer

            _TOKENIZERS[key] = HFTokenizer(hf_name, context_length=ctx)
        else:
            _TOKENIZERS[key] = oc.SimpleTokenizer(context_length=ctx)
    return _TOKENIZERS[key]


def _model_from_cfg(model_cfg: dict, quick_gelu: bool | None = None) -> torch.nn.Module:
    """An open_clip model (random init) from an architecture config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
    oc = _open_clip()
    cfg = json.loads(json.dumps(model_cfg))  # deep copy, JSON-clean
    if quick_gelu is not None:
        cfg["quick_gelu"] = bool(quick_gelu)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if custom_text:
        cls = oc.CoCa if "multimodal_cfg" in cfg else oc.CustomTextCLIP
    else:
        cls = oc.CLIP
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise ConfigError(f"not a valid open_clip model config: {exc}") from None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load an open_clip-compatible checkpoint (``.safetensors``, torch state dict, OpenAI TorchScript archive)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    from ..weights import load_state_dict

    path = Path(path)
    try:
        if _is_torchscript(path):  # OpenAI's original RN50.pt, ViT-B-16.pt, ... files
            with warnings.catch_warnings():  # torch marks TorchScript as deprecated; the files still exist
                warnings.simplefilter("ignore", FutureWarning)
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                sd.pop(key, None)
        else:
            sd = load_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - any read failure is reported the same way
        raise WeightsNotFoundError(f"cannot read CLIP weights {path}: {exc}") from None
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in sd:
        sd["logit_bias"] = torch.zeros_like(model.logit_bias)
    sd.pop("text.transformer.embeddings.position_ids", None)
    for key in {n for n, _ in model.named_buffers()} - set(model.state_dict()):
        sd.pop(key, None)  # non-persistent buffers (attn_mask) that TorchScript archives keep
    hint = "give the right model_name or a model-config JSON beside the checkpoint"
    try:
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except (RuntimeError, AssertionError, ValueError, KeyError) as exc:
        raise LvlmError(f"{path}: weights do not match the model architecture ({str(exc)[:300]}); {hint}") from None
    if missing or unexpected:
        raise LvlmError(
            f"{path}: weights do not match the model architecture "
            f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
            f"{hint}")


def save_open_clip(model: torch.nn.Module, path: str | os.PathLike, model_name: str | None = None,
                   model_cfg: dict | None = None, preprocess_cfg: dict | None = None) -> Path:
    """Save an open_clip model's weights and ``<stem>.json`` (``model_name`` or ``model_cfg`` + preprocessing)."""
    if model_name is None and model_cfg is None:
        raise ValueError("save_open_clip needs the open_clip model_name or the model_cfg to reload the weights")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    meta: dict[str, Any] = {}
    if model_name is not None:
        meta["model_name"] = model_name
    if model_cfg is not None:
        meta["model_cfg"] = model_cfg
    if preprocess_cfg:
        meta["preprocess_cfg"] = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return path


def _weight_file(path: Path, label: str) -> Path:
    """A checkpoint path as given: a file, or a folder holding one weight file (open_clip's names first)."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
        if len(found) == 1:
            return found[0]
        raise WeightsNotFoundError(
            f"{label}: folder {path} holds {len(found) or 'no'} weight files; expected {HF_WEIGHT_FILES[0]} "
            f"(or one {'/'.join(_WEIGHT_SUFFIXES)} file) with a model-config JSON")
    raise WeightsNotFoundError(f"{label}: checkpoint file {str(path)!r} not found")


def _config_beside(path: Path) -> Path | None:
    for cand in (path.with_suffix(".json"), path.parent / HF_CONFIG_FILE, path.parent / "config.json"):
        if cand.is_file():
            return cand
    return None


def _read_config_json(path: Path) -> tuple[str | None, dict | None, dict]:
    """(model_name, model_cfg, preprocess_cfg) from a config JSON (ours or open_clip's HF-hub format)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON model config: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a JSON object")
    pre = dict(data.get("preprocess_cfg", {}) or {})
    if "model_cfg" in data:
        return data.get("model_name"), data["model_cfg"], pre
    if all(k in data for k in ("embed_dim", "vision_cfg", "text_cfg")):
        return None, data, pre
    if "model_name" in data:
        return data["model_name"], None, pre
    raise ConfigError(f"{path}: expected 'model_name', 'model_cfg' or an open_clip model config "
                      "(embed_dim, vision_cfg, text_cfg)")


@contextmanager
def _seeded(seed: int):
    """Seed the random init without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _from_name(model_name: str, quick_gelu: bool, seed: int) -> torch.nn.Module:
    oc = _open_clip()
    if model_name.replace("/", "-") not in oc.list_models():
        raise ConfigError(f"unknown open_clip model {model_name!r}; see open_clip.list_models() "
                          "(or give a checkpoint with a model-config JSON beside it)")
    with _seeded(seed), _quiet_open_clip():
        return oc.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu,
                               pretrained_image=False, pretrained_text=False)


class _DropRandomInitNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_open_clip():
    """Drop open_clip's 'Model initialized randomly' root-logger warning (we load weights right after)."""
    flt = _DropRandomInitNote()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _hf_dirs(repo: str) -> list[Path]:
    """Where an HF-hub repo's files may sit in the cache: ``org--repo/`` or the HF cache layout."""
    from ..weights import cache_dir

    base = cache_dir()
    flat = repo.strip("/").replace("/", "--")
    out = [base / flat]
    out += sorted((base / f"models--{flat}" / "snapshots").glob("*"))
    return out


def _find_cached(pcfg: dict) -> Path | None:
    """A weight file for an open_clip pretrained config in ``$LVLM_HOME`` (URL file name or HF-hub files)."""
    from ..weights import cache_dir

    base = cache_dir()
    if pcfg.get("url"):
        p = base / os.path.basename(urllib.parse.urlparse(pcfg["url"]).path)
        if p.is_file():
            return p
    hub = pcfg.get("hf_hub", "")
    if hub:
        repo, fname = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [fname] if fname else list(HF_WEIGHT_FILES)
        for d in _hf_dirs(repo):
            for n in names:
                if (d / n).is_file():
                    return d / n
    return None


def _expected_files(pcfg: dict) -> tuple[list[str], list[str]]:
    """(file paths looked for, URLs to get them from) for a message."""
    from ..weights import cache_dir

    base = cache_dir()
    files, urls = [], []
    hub = pcfg.get("hf_hub", "")
    if pcfg.get("url"):
        files.append(str(base / os.path.basename(urllib.parse.urlparse(pcfg["url"]).path)))
        urls.append(pcfg["url"])
    if hub:
        repo = hub.rstrip("/") if hub.endswith("/") else os.path.split(hub)[0]
        fname = "" if hub.endswith("/") else os.path.split(hub)[1]
        files.append(str(base / repo.replace("/", "--") / (fname or HF_WEIGHT_FILES[0])))
        urls.append(f"https://huggingface.co/{repo}")
    return files, urls


def _download_host(pcfg: dict) -> str:
    from open_clip.pretrained import has_hf_hub

    if pcfg.get("hf_hub") and has_hf_hub():
        return "huggingface.co"
    return urllib.parse.urlparse(pcfg.get("url", "")).hostname or ""


def load_open_clip(model_name: str | None = None, pretrained: str | None = None,
                   checkpoint: str | os.PathLike | None = "default", device: str = "auto",
                   name: str = "", seed: int = 0) -> OpenClipModel:
    """Build an :class:`OpenClipModel`.

    - ``checkpoint="default"`` + ``pretrained`` tag (or an ``hf-hub:`` model name): official weights,
      from ``$LVLM_HOME`` or downloaded by open_clip when the host answers;
    - ``checkpoint=PATH``: any open_clip state dict file; the architecture is ``model_name`` or the
      model-config JSON beside the file (``<stem>.json`` / ``open_clip_config.json``);
    - ``checkpoint=None`` / ``"random"``: random init of the architecture (seeded).
    """
    from ..weights import cache_dir, is_random, online

    oc = _open_clip()
    device = resolve_device(device)
    label = name or model_name or "open_clip"
    if pretrained and (Path(pretrained).suffix in _WEIGHT_SUFFIXES or Path(pretrained).expanduser().is_file()):
        checkpoint, pretrained = pretrained, None  # a file given as `pretrained` (open_clip's convention)
    pcfg: dict = {}
    if pretrained and model_name and not model_name.startswith("hf-hub:"):
        pcfg = oc.get_pretrained_cfg(model_name, pretrained)
        if not pcfg:
            tags = oc.list_pretrained_tags_by_model(model_name)
            raise ConfigError(f"{label}: open_clip has no pretrained tag {pretrained!r} for {model_name!r}; "
                              f"valid tags: {', '.join(tags) or '(none)'}")
    quick_gelu = bool(pcfg.get("quick_gelu", False))
    pre_from_tag = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}

    if model_name and model_name.startswith("local-dir:"):  # open_clip's folder convention
        checkpoint, model_name = model_name[len("local-dir:"):], None

    # 1) an explicit checkpoint file (or a folder holding one, e.g. what `lvlm train clip` writes)
    if checkpoint not in (None, "default") and not is_random(checkpoint):
        path = _weight_file(Path(checkpoint).expanduser(), label)
        cfg_name, model_cfg, pre = model_name, None, dict(pre_from_tag)
        beside = _config_beside(path)
        if beside is not None and (model_name is None or beside.name == path.with_suffix(".json").name):
            json_name, model_cfg, pre_json = _read_config_json(beside)
            cfg_name = json_name or (model_name if model_cfg is None else None)
            pre.update(pre_json)
        if model_cfg is None and cfg_name is None:
            raise ConfigError(f"{label}: checkpoint {path} needs an open_clip model_name or a model-config JSON "
                              f"beside it ({path.with_suffix('.json').name} or {HF_CONFIG_FILE})")
        if cfg_name is not None and cfg_name.startswith("hf-hub:"):
            raise ConfigError(f"{label}: with a checkpoint file give a built-in open_clip model name or a config JSON, "
                              f"not {cfg_name!r}")
        if model_cfg is not None:
            with _seeded(seed):
                model = _model_from_cfg(model_cfg, quick_gelu=quick_gelu or None)
            tokenizer = _tokenizer_for_cfg(model_cfg)
        else:
            model = _from_name(cfg_name, quick_gelu, seed)
            tokenizer = oc.get_tokenizer(cfg_name)
        load_weights(model, path)
        return OpenClipModel(model, tokenizer, name=label, device=device, preprocess_cfg=pre,
                             model_name=cfg_name, model_cfg=model_cfg, source=str(path))

    if model_name is None:
        raise ConfigError(f"{label}: give model_name (an open_clip model, e.g. RN50) and/or checkpoint=PATH")

    # 2) hf-hub models (BioCLIP, BiomedCLIP): the repo's files in the cache, or downloaded
    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:"):]
        for d in _hf_dirs(repo):
            if (d / HF_CONFIG_FILE).is_file():
                if is_random(checkpoint):
                    _, model_cfg, pre = _read_config_json(d / HF_CONFIG_FILE)
                    with _seeded(seed):
                        model = _model_from_cfg(model_cfg)
                    tok = oc.get_tokenizer(f"local-dir:{d}")
                    return OpenClipModel(model, tok, name=label, device=device, preprocess_cfg=pre,
                                         model_cfg=model_cfg, source="random")
                try:
                    model = oc.create_model(f"local-dir:{d}", device="cpu")
                    tok = oc.get_tokenizer(f"local-dir:{d}")
                except Exception as exc:  # noqa: BLE001
                    raise WeightsNotFoundError(f"{label}: cannot load {model_name} from {d}: {exc}") from None
                return OpenClipModel(model, tok, name=label, device=device, model_name=None, source=str(d))
        where = cache_dir() / repo.replace("/", "--")
        url = f"https://huggingface.co/{repo}"
        if online("huggingface.co"):
            try:
                with _seeded(seed):
                    model = oc.create_model(model_name, cache_dir=str(cache_dir()), load_weights=not is_random(checkpoint))
                tok = oc.get_tokenizer(model_name, cache_dir=str(cache_dir()))
            except Exception as exc:  # noqa: BLE001
                raise WeightsNotFoundError(
                    f"{label}: downloading {model_name} failed ({exc}). Get {HF_CONFIG_FILE} and "
                    f"{HF_WEIGHT_FILES[1]} (+ tokenizer files) from {url} and put them in {where}/") from None
            return OpenClipModel(model, tok, name=label, device=device, source=url)
        raise WeightsNotFoundError(
            f"{label}: weights {HF_CONFIG_FILE} + {HF_WEIGHT_FILES[1]} (or {HF_WEIGHT_FILES[0]}) not found in "
            f"{where}/ and huggingface.co is unreachable (offline). Get them from {url} and put them in {where}/ "
            "(or set LVLM_HOME, or pass checkpoint=PATH).")

    # 3) random init of a named architecture
    if is_random(checkpoint) or not pretrained:  # no tag and no file: the architecture, randomly initialised
        model = _from_name(model_name, quick_gelu, seed)
        return OpenClipModel(model, oc.get_tokenizer(model_name), name=label, device=device,
                             preprocess_cfg=pre_from_tag, model_name=model_name, source="random")

    # 4) official weights of a pretrained tag: cache first, then open_clip's downloader when online
    cached = _find_cached(pcfg)
    if cached is not None:
        model = _from_name(model_name, quick_gelu, seed)
        load_weights(model, cached)
        return OpenClipModel(model, oc.get_tokenizer(model_name), name=label, device=device,
                             preprocess_cfg=pre_from_tag, model_name=model_name, source=str(cached))
    files, urls = _expected_files(pcfg)
    host = _download_host(pcfg)
    if online(host):
        try:
            model = oc.create_model(model_name, pretrained=pretrained, cache_dir=str(cache_dir()),
                                    force_quick_gelu=quick_gelu)
        except Exception as exc:  # noqa: BLE001
            raise WeightsNotFoundError(
                f"{label}: downloading open_clip {model_name}/{pretrained} failed ({exc}). Get "
                f"{' or '.join(urls)} and put it at {files[0]}") from None
        return OpenClipModel(model, oc.get_tokenizer(model_name), name=label, device=device,
                             preprocess_cfg=pre_from_tag, model_name=model_name, source=f"{model_name}/{pretrained}")
    raise WeightsNotFoundError(
        f"{label}: weights {Path(files[0]).name} (open_clip {model_name} / {pretrained}) not found in {cache_dir()} "
        f"(looked for {', '.join(files)}) and {host} is unreachable (offline). Get it from {' or '.join(urls)} "
        f"and put it at {files[0]} (or set LVLM_HOME, or pass checkpoint=PATH).")


# ------------------------------------------------------------------------------------------------
# Registered presets
# ------------------------------------------------------------------------------------------------
def _source(p: dict[str, str]) -> str:
    oc_name = p["model_name"] + (f" / {p['pretrained']}" if p["pretrained"] else "")
    return f"open_clip {oc_name}; data: {p['data']}; licence: {p['licence']}"


def _make_preset(preset: str, p: dict[str, str]):
    def build_preset(checkpoint: str | None = "default", device: str = "auto", seed: int = 0) -> OpenClipModel:
        return load_open_clip(p["model_name"], p["pretrained"] or None, checkpoint=checkpoint, device=device,
                              name=preset, seed=seed)

    build_preset.__name__ = f"build_{preset.replace('-', '_')}"
    build_preset.__doc__ = f"{preset}: CLIP {p['backbone']} pretrained on {p['data']} (seed 001 Table III)."
    return build_preset


for _preset, _p in PRESETS.items():
    register("clip", _preset, description=f"{_p['backbone']} CLIP (seed 001 Table III)",
             source=_source(_p))(_make_preset(_preset, _p))


@register("clip", "open_clip", description="any open_clip model: name + pretrained tag, hf-hub id, or a checkpoint file",
          source="open_clip model name / tag / checkpoint path (+ model-config JSON beside it)")
def build_open_clip(model_name: str | None = None, pretrained: str | None = None, checkpoint: str | None = None,
                    device: str = "auto", seed: int = 0, name: str = "") -> OpenClipModel:
    """Any open_clip model: ``model_name`` + ``pretrained`` tag, or ``checkpoint`` = a weight file (FS-/FP- models)."""
    if checkpoint is None and pretrained:
        checkpoint = "default"
    if checkpoint is None and model_name and model_name.startswith("hf-hub:"):
        checkpoint = "default"
    label = name or (Path(checkpoint).stem if checkpoint not in (None, "default", "random") else model_name or "open_clip")
    return load_open_clip(model_name, pretrained, checkpoint=checkpoint, device=device, name=label, seed=seed)


# Tiny random configs built from open_clip's real tower classes (ModifiedResNet, VisionTransformer).
_TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS: dict[str, dict] = {
    "tiny-rn": {"embed_dim": 32,
                "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "image_size": 64},
                "text_cfg": _TINY_TEXT},
    "tiny-vit": {"embed_dim": 32,
                 "vision_cfg": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 64,
                                "mlp_ratio": 2.0},
                 "text_cfg": _TINY_TEXT},
}


def _make_tiny(tiny: str):
    def build_tiny(checkpoint: str | None = None, device: str = "auto", seed: int = 0) -> OpenClipModel:
        from ..weights import is_random

        cfg = TINY_CONFIGS[tiny]
        with _seeded(seed):
            model = _model_from_cfg(cfg)
        source = "random"
        if not is_random(checkpoint) and checkpoint != "default":
            load_weights(model, checkpoint)
            source = str(checkpoint)
        return OpenClipModel(model, _tokenizer_for_cfg(cfg), name=tiny, device=resolve_device(device),
                             model_cfg=cfg, source=source)

    build_tiny.__name__ = f"build_{tiny.replace('-', '_')}"
    build_tiny.__doc__ = f"{tiny}: tiny randomly initialised open_clip model (seeded) for tests and smoke runs."
    return build_tiny


register("clip", "tiny-rn", description="tiny random open_clip CLIP with a ModifiedResNet image tower (tests)",
         source="random init, seeded (open_clip ModifiedResNet, 64 px)")(_make_tiny("tiny-rn"))
register("clip", "tiny-vit", description="tiny random open_clip CLIP with a VisionTransformer image tower (tests)",
         source="random init, seeded (open_clip VisionTransformer, 64 px, 16 px patches)")(_make_tiny("tiny-vit"))


# ------------------------------------------------------------------------------------------------
# Shared instances: stages that name the same CLIP get one model
# ------------------------------------------------------------------------------------------------
_LOADED: OrderedDict[str, ClipModel] = OrderedDict()
_LOADED_MAX = 3


def load_clip(spec: Any, device: str = "auto", cache: bool = True) -> ClipModel:
    """A :class:`ClipModel` from a preset name, ``{"name": ..., **kwargs}`` or an instance (returned as is).

    Built models are kept (the last few), so a selector and a saliency method naming the same
    preset share one model.
    """
    from ..registry import build_spec

    if isinstance(spec, ClipModel):
        return spec
    if spec is None:
        raise ConfigError("no CLIP model given; valid names: see `lvlm list clip`")
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"a CLIP model is a preset name or {{name: ..., ...}}, got {type(spec).__name__}")
    spec = dict(spec)
    spec.setdefault("device", device)
    spec["device"] = resolve_device(spec["device"])
    key = json.dumps(spec, sort_keys=True, default=str)
    if cache and key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    model = build_spec("clip", spec)
    if cache:
        _LOADED[key] = model
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return model


def clear_clip_cache() -> None:
    """Forget the CLIP models kept by :func:`load_clip` (frees their memory once nothing else holds them)."""
    _LOADED.clear()
