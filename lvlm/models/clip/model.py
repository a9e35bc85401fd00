"""The open_clip adapter: :class:`OpenClipModel`, an open_clip ``CLIP`` / ``CustomTextCLIP`` behind the
:class:`~lvlm.models.clip_base.ClipModel` interface, with open_clip's preprocessing batched on device,
a text-embedding cache and the CAM hooks (target layer, ViT token reshape) the saliency methods use.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, LvlmError
from ..clip_base import ClipModel
from .presets import OPENAI_MEAN, OPENAI_STD


def open_clip_module():
    """The ``open_clip`` module (one clear error naming the extra when it is not installed)."""
    from ...optional import require

    return require("open_clip", "CLIP models")


class OpenClipModel(ClipModel):
    """An open_clip model (``CLIP`` / ``CustomTextCLIP``) with its tokenizer and batched on-device
    preprocessing.

    Args:
        model: the open_clip model.
        tokenizer: its tokenizer.
        name: the display name (preset name).
        device: the device the model runs on.
        preprocess_cfg: open_clip's preprocessing config (size, mean, std, interpolation, resize mode), or
            None for the model's own.
        model_name: the open_clip architecture name when built from one (for :meth:`save`).
        model_cfg: the architecture config dict when built from one (for :meth:`save`).
        source: where the weights came from (a path, ``random``...).
    """

    text_cache_size = 4096

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str = "",
        device: str = "cpu",
        preprocess_cfg: dict | None = None,
        model_name: str | None = None,
        model_cfg: dict | None = None,
        source: str = "",
    ) -> None:
        oc = open_clip_module()
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
        self.preprocess_cfg = {
            "size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": self.fill_color,
        }
        from open_clip.transformer import VisionTransformer

        visual = model.visual
        self.is_vit = isinstance(visual, VisionTransformer) or _timm_is_transformer(visual)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OpenClipModel({self.name!r}, image_size={self.image_size}, vit={self.is_vit}, "
            f"device={self.device!r})"
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- preprocessing ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 images -> B x 3 x S x S normalised tensor on ``device`` (open_clip's transform).

        Args:
            images: H x W x 3 uint8 images: a list, or a B x H x W x 3 array / tensor.
        """
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
        return torch.cat(
            [
                self.preprocess_chw(
                    torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].to(self.device)
                )
                for im in images
            ]
        )

    def preprocess_chw(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W uint8 (or 0-255 float) tensor on device -> B x 3 x S x S normalised pixels.

        Resize (shortest side to S, bicubic with antialiasing, rounded to 8 bits as PIL does), centre
        crop and normalise: the same transform as open_clip's PIL preprocessing, batched on device.

        Args:
            x: B x 3 x H x W uint8 (or 0-255 float) tensor on the model's device.
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
            xf = xf[:, :, top : top + s, left : left + s]
        return self.normalize(xf)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S pixels on the 0-255 scale -> model input (rounded to 8 bits, scaled, normalised).

        Args:
            x: B x 3 x S x S pixels on the 0-255 scale.
        """
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
        """ViT block output (B x L x C tokens; open_clip 3.x runs batch-first) -> B x C x h x w, class token
        dropped.

        Args:
            activations: the CAM target layer's output.
        """
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

        Args:
            path: the weights file (``.safetensors`` or ``.pt``).
        """
        from .factory import save_open_clip

        return save_open_clip(
            self.model,
            path,
            model_name=self.model_name,
            model_cfg=self.model_cfg,
            preprocess_cfg=self.preprocess_cfg,
        )


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize in PIL's order: horizontal pass, round to 8 bits, vertical pass (matches PIL to 1
    level)."""
    h, w = x.shape[-2:]
    nh, nw = size
    if nw != w:
        x = (
            F.interpolate(x, size=(h, nw), mode=mode, align_corners=False, antialias=True)
            .round()
            .clamp(0, 255)
        )
    if nh != h:
        x = (
            F.interpolate(x, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
            .round()
            .clamp(0, 255)
        )
    return x


def _timm_is_transformer(visual: torch.nn.Module) -> bool:
    trunk = getattr(visual, "trunk", None)
    return trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed")
