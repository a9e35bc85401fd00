"""CLIP models (kind ``"clip"``): open_clip presets, any open_clip model, tiny random models for tests.

Split as open_clip splits itself:

- :mod:`.presets`: the presets table (preset -> open_clip model name, pretrained tag, data, licence) and
  the tiny configs; docs/clip.md's table is :func:`~.presets.presets_markdown`;
- :mod:`.factory`: building and loading (architecture, weights through :mod:`lvlm.weights`, tokenizer);
- :mod:`.model`: the adapter, :class:`OpenClipModel` (preprocessing, encoders, CAM hooks);
- this module: registration of the ``clip`` kind and :func:`load_clip`, which shares one instance per spec.

Every preset takes ``checkpoint``: ``"default"`` (official weights), a file path, or ``null`` /
``"random"`` (the real architecture, randomly initialised: useful offline); presets whose weights are on
the Hugging Face hub also take ``revision``. Offline, a missing file is a
:class:`~lvlm.errors.WeightsNotFoundError` naming the file, the folders and the URL within seconds.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ...device import resolve_device
from ...errors import ConfigError
from ...registry import register
from ..clip_base import ClipModel
from .factory import (
    _model_from_cfg,
    _seeded,
    _tokenizer_for_cfg,
    load_open_clip,
    load_weights,
    save_open_clip,
)
from .model import OpenClipModel
from .presets import (
    HF_CONFIG_FILE,
    HF_WEIGHT_FILES,
    OPENAI_MEAN,
    OPENAI_STD,
    PRESETS,
    TINY_CONFIGS,
    presets_markdown,
    source_line,
)

__all__ = [
    "HF_CONFIG_FILE",
    "HF_WEIGHT_FILES",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PRESETS",
    "TINY_CONFIGS",
    "OpenClipModel",
    "build_open_clip",
    "clear_clip_cache",
    "load_clip",
    "load_open_clip",
    "load_weights",
    "presets_markdown",
    "save_open_clip",
]


# ------------------------------------------------------------------------------------------------
# Registered presets
# ------------------------------------------------------------------------------------------------
def _make_preset(preset: str, p: dict[str, str]):
    def build_preset(
        checkpoint: str | None = "default", device: str = "auto", seed: int = 0, revision: str | None = None
    ) -> OpenClipModel:
        return load_open_clip(
            p["model_name"],
            p["pretrained"] or None,
            checkpoint=checkpoint,
            device=device,
            name=preset,
            seed=seed,
            revision=revision,
        )

    build_preset.__name__ = f"build_{preset.replace('-', '_')}"
    build_preset.__doc__ = (
        f"{preset}: CLIP {p['backbone']} pretrained on {p['data']}.\n\n    Args:\n"
        "        checkpoint: ``default`` (official weights), a file, or ``random``.\n"
        "        device: torch device (``auto``: CUDA when available).\n"
        "        seed: seed of a random initialisation.\n"
        "        revision: Hugging Face revision of hub-hosted weights.\n"
    )
    return build_preset


for _preset, _p in PRESETS.items():
    register("clip", _preset, description=f"{_p['backbone']} CLIP ({_p['data']})", source=source_line(_p))(
        _make_preset(_preset, _p)
    )


@register(
    "clip",
    "open_clip",
    description="any open_clip model: name + pretrained tag, hf-hub id, or a checkpoint file",
    source="open_clip model name / tag / checkpoint path (+ model-config JSON beside it)",
)
def build_open_clip(
    model_name: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    seed: int = 0,
    name: str = "",
    revision: str | None = None,
) -> OpenClipModel:
    """Any open_clip model: ``model_name`` + ``pretrained`` tag, or ``checkpoint`` = a weight file (FS-/FP-
    models).

    Args:
        model_name: open_clip model name, ``hf-hub:org/repo`` or ``local-dir:FOLDER``.
        pretrained: open_clip pretrained tag.
        checkpoint: a weight file or folder (the architecture from ``model_name`` or the JSON beside it).
        device: torch device.
        seed: seed of a random initialisation.
        name: the name shown in messages (default: the checkpoint's stem or ``model_name``).
        revision: Hugging Face revision of hub-hosted weights.
    """
    if checkpoint is None and pretrained:
        checkpoint = "default"
    if checkpoint is None and model_name and model_name.startswith("hf-hub:"):
        checkpoint = "default"
    label = name or (
        Path(checkpoint).stem if checkpoint not in (None, "default", "random") else model_name or "open_clip"
    )
    return load_open_clip(
        model_name, pretrained, checkpoint=checkpoint, device=device, name=label, seed=seed, revision=revision
    )


def _make_tiny(tiny: str):
    def build_tiny(checkpoint: str | None = None, device: str = "auto", seed: int = 0) -> OpenClipModel:
        from ...weights import is_random

        cfg = TINY_CONFIGS[tiny]
        with _seeded(seed):
            model = _model_from_cfg(cfg)
        source = "random"
        if not is_random(checkpoint) and checkpoint != "default":
            load_weights(model, checkpoint, what=f"CLIP {tiny}")
            source = str(checkpoint)
        return OpenClipModel(
            model,
            _tokenizer_for_cfg(cfg),
            name=tiny,
            device=resolve_device(device),
            model_cfg=cfg,
            source=source,
        )

    build_tiny.__name__ = f"build_{tiny.replace('-', '_')}"
    build_tiny.__doc__ = (
        f"{tiny}: tiny randomly initialised open_clip model (seeded) for tests and smoke runs.\n\n"
        "    Args:\n        checkpoint: a weight file to load instead (``None``: random).\n"
        "        device: torch device.\n        seed: seed of the random initialisation.\n"
    )
    return build_tiny


register(
    "clip",
    "tiny-rn",
    description="tiny random open_clip CLIP with a ModifiedResNet image tower (tests)",
    source="random init, seeded (open_clip ModifiedResNet, 64 px)",
)(_make_tiny("tiny-rn"))
register(
    "clip",
    "tiny-vit",
    description="tiny random open_clip CLIP with a VisionTransformer image tower (tests)",
    source="random init, seeded (open_clip VisionTransformer, 64 px, 16 px patches)",
)(_make_tiny("tiny-vit"))


# ------------------------------------------------------------------------------------------------
# Shared instances: stages that name the same CLIP get one model
# ------------------------------------------------------------------------------------------------
_LOADED: OrderedDict[str, ClipModel] = OrderedDict()
_LOADED_MAX = 3


def load_clip(spec: Any, device: str = "auto", cache: bool = True) -> ClipModel:
    """A :class:`ClipModel` from a preset name, ``{"name": ..., **kwargs}`` or an instance (returned as is).

    Built models are kept (the last few), so a selector and a saliency method naming the same
    preset share one model.

    Args:
        spec: a preset name, ``{"name": ..., **kwargs}`` or a :class:`ClipModel`.
        device: ``auto``, ``cpu``, ``cuda``...
        cache: keep the built model for later calls with the same spec.
    """
    from ...registry import build_spec

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
