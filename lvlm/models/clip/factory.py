"""Building open_clip models: architecture, weights, tokenizer (as open_clip's ``factory.py``).

:func:`load_open_clip` takes an open_clip model name + pretrained tag, an ``hf-hub:`` id, a checkpoint
file or folder (how our own trained FS-/FP- models are loaded), or ``checkpoint=None`` / ``"random"``
(the real architecture, randomly initialised and seeded). Every file comes through :mod:`lvlm.weights`:

- a pretrained tag's weights: ``$LVLM_HOME/<file name of the tag's URL>`` or
  ``$LVLM_HOME/<org>--<repo>/``, else the tag's Hugging Face repo through ``huggingface_hub`` (its cache,
  ``HF_HOME``, ``HF_TOKEN``, ``revision``), else the tag's URL (:func:`lvlm.weights.resolve`);
- an ``hf-hub:`` model: ``$LVLM_HOME/<org>--<repo>/``, else the repo's snapshot in the Hugging Face cache
  or downloaded (:func:`lvlm.weights.hf_snapshot`);
- checkpoint files: :func:`lvlm.weights.load_state_dict` and :func:`lvlm.weights.load_into`, so a
  missing, empty, truncated or foreign file, or one for another architecture, is one
  :class:`~lvlm.errors.WeightsError` line naming the file and the model.

Offline, a missing file raises :class:`~lvlm.errors.WeightsNotFoundError` within seconds, naming the
file, the folders looked in and where to get it. open_clip's own downloader is never called.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ...device import resolve_device
from ...errors import ConfigError, WeightsError, WeightsNotFoundError
from ...fsutil import atomic_write, atomic_write_json
from ...weights import (
    WeightSpec,
    cache_dir,
    hf_cache_dir,
    hf_file,
    hf_page,
    hf_snapshot,
    is_random,
    load_into,
    load_state_dict,
    offline,
    resolve,
)
from .model import OpenClipModel, open_clip_module
from .presets import HF_CONFIG_FILE, HF_WEIGHT_FILES, WEIGHT_SUFFIXES

_open_clip = open_clip_module
_WEIGHT_SUFFIXES = WEIGHT_SUFFIXES

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
    """An open_clip model (random init) from an architecture config dict (``embed_dim``, ``vision_cfg``,
    ``text_cfg``)."""
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


def load_weights(model: torch.nn.Module, path: str | os.PathLike, what: str = "CLIP") -> None:
    """Load an open_clip-compatible checkpoint (``.safetensors``, torch state dict, OpenAI TorchScript
    archive).

    The keys are converted as open_clip does (timm / TorchScript / ``module.`` layouts, position-embedding
    resizing); any problem is one :class:`~lvlm.errors.WeightsError` line naming the file and ``what``.

    Args:
        model: the open_clip model to fill.
        path: the weight file.
        what: the model the file is meant for, as the user knows it (e.g. ``"CLIP OA-RN50"``).
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    path = Path(path).expanduser()
    if path.is_file() and _is_torchscript(path):  # OpenAI's original RN50.pt, ViT-B-16.pt, ... files
        try:
            with warnings.catch_warnings():  # torch marks TorchScript as deprecated; the files still exist
                warnings.simplefilter("ignore", FutureWarning)
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        except (RuntimeError, OSError, ValueError) as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise WeightsError(f"{what} {str(path)!r}: not a readable TorchScript archive ({text})") from None
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
    else:
        sd = load_state_dict(path, what=what)
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    hint = "give the right model_name or a model-config JSON beside the checkpoint"
    try:
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
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
    except (RuntimeError, AssertionError, ValueError, KeyError, AttributeError, TypeError) as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(
            f"{what} {str(path)!r}: the weights do not fit this model ({text}); {hint}"
        ) from None
    load_into(model, sd, what=what, path=path, hint=hint)


def save_open_clip(
    model: torch.nn.Module,
    path: str | os.PathLike,
    model_name: str | None = None,
    model_cfg: dict | None = None,
    preprocess_cfg: dict | None = None,
) -> Path:
    """Save an open_clip model's weights and ``<stem>.json`` (``model_name`` or ``model_cfg`` +
    preprocessing).

    Args:
        model: the open_clip model.
        path: the weights file (``.safetensors`` or ``.pt``).
        model_name: the open_clip architecture name, or None with ``model_cfg``.
        model_cfg: the open_clip model config dict, or None with ``model_name``.
        preprocess_cfg: the preprocessing config saved with it, or None.
    """
    if model_name is None and model_cfg is None:
        raise ValueError(
            "save_open_clip needs the open_clip model_name or the model_cfg to reload the weights"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write(path, save(sd))
    else:
        atomic_write(path, lambda f: torch.save(sd, f))
    meta: dict[str, Any] = {}
    if model_name is not None:
        meta["model_name"] = model_name
    if model_cfg is not None:
        meta["model_cfg"] = model_cfg
    if preprocess_cfg:
        meta["preprocess_cfg"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()
        }
    atomic_write_json(path.with_suffix(".json"), meta, indent=2)
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
            f"(or one {'/'.join(_WEIGHT_SUFFIXES)} file) with a model-config JSON"
        )
    raise WeightsNotFoundError(f"CLIP {label} checkpoint {str(path)!r}: file not found")


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
    raise ConfigError(
        f"{path}: expected 'model_name', 'model_cfg' or an open_clip model config "
        "(embed_dim, vision_cfg, text_cfg)"
    )


@contextmanager
def _seeded(seed: int):
    """Seed the random init without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _from_name(model_name: str, quick_gelu: bool, seed: int) -> torch.nn.Module:
    oc = _open_clip()
    if model_name.replace("/", "-") not in oc.list_models():
        raise ConfigError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() "
            "(or give a checkpoint with a model-config JSON beside it)"
        )
    with _seeded(seed), _quiet_open_clip():
        return oc.create_model(
            model_name,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            pretrained_image=False,
            pretrained_text=False,
        )


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
    """Where an HF-hub repo's files may sit in ``$LVLM_HOME``: ``org--repo/`` or the HF cache layout."""
    base = cache_dir()
    flat = repo.strip("/").replace("/", "--")
    return [base / flat, *sorted((base / f"models--{flat}" / "snapshots").glob("*"))]


def _split_hub(hub: str) -> tuple[str, str]:
    """open_clip's ``hf_hub`` field (``"org/repo/"`` or ``"org/repo/file"``) -> (repo, file or "")."""
    if hub.endswith("/"):
        return hub.rstrip("/"), ""
    repo, fname = os.path.split(hub)
    return repo, fname


def _url_file(url: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path)


def _find_cached(pcfg: dict) -> Path | None:
    """A weight file for an open_clip pretrained config in ``$LVLM_HOME`` (URL file name or HF-hub files)."""
    base = cache_dir()
    if pcfg.get("url"):
        p = base / _url_file(pcfg["url"])
        if p.is_file():
            return p
    if pcfg.get("hf_hub"):
        repo, fname = _split_hub(pcfg["hf_hub"])
        for d in _hf_dirs(repo):
            for n in [fname] if fname else list(HF_WEIGHT_FILES):
                if (d / n).is_file():
                    return d / n
    return None


def tag_weights(pcfg: dict, what: str, model_name: str, pretrained: str, revision: str | None = None) -> Path:
    """The weight file of an open_clip pretrained tag: ``$LVLM_HOME``, the Hugging Face cache / hub, the URL.

    Args:
        pcfg: open_clip's pretrained config of the tag (``get_pretrained_cfg``), with ``url`` / ``hf_hub``.
        what: the model, as the user knows it (``"CLIP OA-RN50"``).
        model_name: the open_clip model name (for the message).
        pretrained: the tag (for the message).
        revision: the Hugging Face revision to pin (a branch, tag or commit hash).

    Returns:
        The local path of the weights.
    """
    cached = _find_cached(pcfg)
    if cached is not None:
        return cached
    base = cache_dir()
    url = pcfg.get("url") or ""
    repo, fname = _split_hub(pcfg.get("hf_hub") or "")
    problems: list[str] = []
    if repo:
        try:
            return hf_file(
                repo,
                [fname] if fname else list(HF_WEIGHT_FILES),
                what=what,
                revision=revision,
                looked_in=[base],
            )
        except WeightsNotFoundError as exc:  # gated repositories (WeightsError) are reported as they are
            problems.append(str(exc))
    if url:
        try:
            return resolve(WeightSpec(filename=_url_file(url), url=url))
        except WeightsNotFoundError as exc:
            problems.append(str(exc))
    target = base / (_url_file(url) if url else (fname or HF_WEIGHT_FILES[0]))
    sources = " or ".join(x for x in (url, hf_page(repo) if repo else "") if x) or "(no public URL known)"
    if offline():
        reason = "downloads are off (LVLM_OFFLINE / HF_HUB_OFFLINE is set: offline)"
    elif any("unreachable" in p for p in problems):
        reason = "the hosts are unreachable (offline)"
    else:
        reason = "downloading failed (" + "; ".join(p[:200] for p in problems) + ")"
    raise WeightsNotFoundError(
        f"{what}: weights {target.name} (open_clip {model_name} / {pretrained}) not found in {base} or the "
        f"Hugging Face cache {hf_cache_dir()} and {reason}. Get it from {sources} and put it at {target} "
        "(or set LVLM_HOME / HF_HOME, or pass checkpoint=PATH)."
    )


def hub_model_dir(repo: str, what: str, revision: str | None = None) -> Path:
    """The folder of an open_clip ``hf-hub:`` model (``open_clip_config.json`` + weights + tokenizer files).

    ``$LVLM_HOME/<org>--<repo>/`` first, then the repo's snapshot through ``huggingface_hub``.

    Args:
        repo: the Hugging Face repo id (``"imageomics/bioclip"``).
        what: the model, as the user knows it.
        revision: the revision to pin.
    """
    for d in _hf_dirs(repo):
        if (d / HF_CONFIG_FILE).is_file():
            return d
    d = hf_snapshot(
        repo,
        what=f"{what} ({HF_CONFIG_FILE} + {HF_WEIGHT_FILES[0]})",
        revision=revision,
        allow_patterns=[HF_CONFIG_FILE, *HF_WEIGHT_FILES, "*.json", "*.txt", "*.model"],
        looked_in=[cache_dir() / repo.replace("/", "--")],
    )
    if not (d / HF_CONFIG_FILE).is_file():
        raise WeightsNotFoundError(
            f"{what}: {d} holds no {HF_CONFIG_FILE}: not an open_clip model ({hf_page(repo)})"
        )
    return d


def load_open_clip(
    model_name: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = "default",
    device: str = "auto",
    name: str = "",
    seed: int = 0,
    revision: str | None = None,
) -> OpenClipModel:
    """Build an :class:`OpenClipModel`.

    Args:
        model_name: an open_clip model name (``"RN50"``), ``"hf-hub:org/repo"`` or ``"local-dir:FOLDER"``.
        pretrained: an open_clip pretrained tag (``"openai"``), or a weight file (open_clip's convention).
        checkpoint: ``"default"``: the tag's / hub model's official weights (``$LVLM_HOME``, the Hugging
            Face cache, or downloaded when the host answers); a file or folder: any open_clip state dict,
            the architecture being ``model_name`` or the model-config JSON beside the file
            (``<stem>.json`` / ``open_clip_config.json``); ``None`` / ``"random"``: the architecture,
            randomly initialised (seeded).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        name: the preset name shown in messages and ``repr`` (default: ``model_name``).
        seed: seed of the random initialisation.
        revision: Hugging Face revision (branch, tag or commit hash) of hub-hosted weights.

    Returns:
        The model, in eval mode on ``device``.
    """
    oc = _open_clip()
    device = resolve_device(device)
    label = name or model_name or "open_clip"
    what = f"CLIP {label}"
    if pretrained and (Path(pretrained).suffix in WEIGHT_SUFFIXES or Path(pretrained).expanduser().is_file()):
        checkpoint, pretrained = pretrained, None  # a file given as `pretrained` (open_clip's convention)
    pcfg: dict = {}
    if pretrained and model_name and not model_name.startswith("hf-hub:"):
        pcfg = oc.get_pretrained_cfg(model_name, pretrained)
        if not pcfg:
            tags = oc.list_pretrained_tags_by_model(model_name)
            raise ConfigError(
                f"{label}: open_clip has no pretrained tag {pretrained!r} for {model_name!r}; "
                f"valid tags: {', '.join(tags) or '(none)'}"
            )
    quick_gelu = bool(pcfg.get("quick_gelu", False))
    pre_from_tag = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}

    if model_name and model_name.startswith("local-dir:"):  # open_clip's folder convention
        checkpoint, model_name = model_name[len("local-dir:") :], None

    # 1) an explicit checkpoint file (or a folder holding one, e.g. what `lvlm train clip` writes)
    if checkpoint not in (None, "default") and not is_random(checkpoint):
        return _from_checkpoint(
            Path(checkpoint).expanduser(), model_name, pre_from_tag, quick_gelu, seed, label, device
        )

    if model_name is None:
        raise ConfigError(f"{label}: give model_name (an open_clip model, e.g. RN50) and/or checkpoint=PATH")

    # 2) hf-hub models (BioCLIP, BiomedCLIP): the repo's folder in $LVLM_HOME or the Hugging Face cache
    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:") :]
        d = hub_model_dir(repo, label, revision=revision)
        _, model_cfg, pre = _read_config_json(d / HF_CONFIG_FILE)
        if model_cfg is None:
            raise WeightsError(f"{what}: {d / HF_CONFIG_FILE} holds no model_cfg")
        with _seeded(seed):
            model = _model_from_cfg(model_cfg)
        try:
            tok = oc.get_tokenizer(f"local-dir:{d}")
        except (OSError, ValueError) as exc:  # an HF tokenizer that is neither in the folder nor cached
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise WeightsNotFoundError(
                f"{what}: the tokenizer of {model_name} cannot be loaded ({text})"
            ) from None
        source = "random"
        if not is_random(checkpoint):
            load_weights(model, _weight_file(d, label), what=what)
            source = str(d)
        return OpenClipModel(
            model, tok, name=label, device=device, preprocess_cfg=pre, model_cfg=model_cfg, source=source
        )

    # 3) random init of a named architecture
    if is_random(checkpoint) or not pretrained:  # no tag and no file: the architecture, randomly initialised
        model = _from_name(model_name, quick_gelu, seed)
        return OpenClipModel(
            model,
            oc.get_tokenizer(model_name),
            name=label,
            device=device,
            preprocess_cfg=pre_from_tag,
            model_name=model_name,
            source="random",
        )

    # 4) official weights of a pretrained tag, through lvlm.weights
    path = tag_weights(pcfg, what, model_name, pretrained, revision=revision)
    model = _from_name(model_name, quick_gelu, seed)
    load_weights(model, path, what=what)
    return OpenClipModel(
        model,
        oc.get_tokenizer(model_name),
        name=label,
        device=device,
        preprocess_cfg=pre_from_tag,
        model_name=model_name,
        source=str(path),
    )


def _from_checkpoint(
    path: Path,
    model_name: str | None,
    pre_from_tag: dict,
    quick_gelu: bool,
    seed: int,
    label: str,
    device: str,
) -> OpenClipModel:
    """A model from a checkpoint file / folder; the architecture from ``model_name`` or the JSON beside it."""
    oc = _open_clip()
    path = _weight_file(path, label)
    cfg_name, model_cfg, pre = model_name, None, dict(pre_from_tag)
    beside = _config_beside(path)
    if beside is not None and (model_name is None or beside.name == path.with_suffix(".json").name):
        json_name, model_cfg, pre_json = _read_config_json(beside)
        cfg_name = json_name or (model_name if model_cfg is None else None)
        pre.update(pre_json)
    if model_cfg is None and cfg_name is None:
        raise ConfigError(
            f"{label}: checkpoint {path} needs an open_clip model_name or a model-config JSON "
            f"beside it ({path.with_suffix('.json').name} or {HF_CONFIG_FILE})"
        )
    if cfg_name is not None and cfg_name.startswith("hf-hub:"):
        raise ConfigError(
            f"{label}: with a checkpoint file give a built-in open_clip model name or a config JSON, "
            f"not {cfg_name!r}"
        )
    if model_cfg is not None:
        with _seeded(seed):
            model = _model_from_cfg(model_cfg, quick_gelu=quick_gelu or None)
        tokenizer = _tokenizer_for_cfg(model_cfg)
    else:
        model = _from_name(cfg_name, quick_gelu, seed)
        tokenizer = oc.get_tokenizer(cfg_name)
    load_weights(model, path, what=f"CLIP {label}")
    return OpenClipModel(
        model,
        tokenizer,
        name=label,
        device=device,
        preprocess_cfg=pre,
        model_name=cfg_name,
        model_cfg=model_cfg,
        source=str(path),
    )
