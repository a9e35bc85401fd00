"""MedCLIP (Wang et al. 2022) models behind the :class:`~lvlm.models.clip_base.ClipModel` interface.

Presets ``MC-RN50`` (ResNet-50 image tower) and ``MC-SwinT`` (Swin-T image tower) of the benchmark's
CLIP comparison table (docs/clip.md); both use MedCLIP's Bio_ClinicalBERT text tower. The ``medclip`` package
is an optional extra (``pip install "lvlm[medclip]"``), imported only when a preset is built.

Weights: ``$LVLM_HOME/medclip-resnet/pytorch_model.bin`` (``medclip-vit/`` for Swin-T), or the
published zip, downloaded and unpacked there when its host answers. MedCLIP also builds its towers
from ``emilyalsentzer/Bio_ClinicalBERT`` (and ``microsoft/swin-tiny-patch4-window7-224``) on the
Hugging Face hub, so those must be cached or downloadable.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..errors import LvlmError, WeightsError, WeightsNotFoundError
from ..registry import register
from ..weights import hf_pretrained, load_into, load_state_dict
from .clip_base import ClipModel

MEDCLIP_MEAN = 0.5862785803043838  # MedCLIP's single-channel normalisation (medclip.constants)
MEDCLIP_STD = 0.27950088968644304
WEIGHTS_NAME = "pytorch_model.bin"
VARIANTS = {
    "resnet": {
        "dir": "medclip-resnet",
        "zip": "medclip-pretrained.zip",
        "cls": "MedCLIPVisionModel",
        "url": "https://storage.googleapis.com/pytrial/medclip-pretrained.zip",
    },
    "swin": {
        "dir": "medclip-vit",
        "zip": "medclip-vit-pretrained.zip",
        "cls": "MedCLIPVisionModelViT",
        "url": "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip",
    },
}


def _weights_file(variant: str, checkpoint: str | os.PathLike | None) -> Path:
    """The MedCLIP ``pytorch_model.bin``: a given file / folder, the cache, or the downloaded zip unpacked."""
    from ..weights import WeightSpec, cache_dir, resolve

    v = VARIANTS[variant]
    if checkpoint not in (None, "default"):
        p = Path(checkpoint).expanduser()
        if p.is_dir():
            p = p / WEIGHTS_NAME
        if not p.is_file():
            raise WeightsNotFoundError(f"MedCLIP {variant} checkpoint {str(p)!r}: file not found")
        return p
    target = cache_dir() / v["dir"] / WEIGHTS_NAME
    if target.is_file():
        return target
    spec = WeightSpec(
        filename=v["zip"], url=v["url"], page="https://github.com/RyanWangZf/MedCLIP", license="MIT"
    )
    try:
        archive = resolve(spec)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(
            f"MedCLIP {variant} weights {target} not found; {exc} (unpack it so that {target} exists)"
        ) from None
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target.parent)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(
            f"MedCLIP {variant} archive {str(archive)!r}: not a readable zip ({exc}); "
            f"delete it and download it again from {v['url']}"
        ) from None
    found = sorted(target.parent.rglob(WEIGHTS_NAME))
    if not found:
        raise WeightsNotFoundError(f"{archive} holds no {WEIGHTS_NAME}")
    return found[0]


class MedClipModel(ClipModel):
    """A MedCLIP model: greyscale, square-padded 224 px input; Bio_ClinicalBERT text tower.

    Args:
        variant: ``resnet`` or ``swin``.
        checkpoint: ``default`` (the cached or downloaded MedCLIP weights), a ``pytorch_model.bin`` file or
            its folder; None is the same as ``default``.
        device: ``auto``, ``cpu``, ``cuda``...
        name: the model's display name (default ``medclip-<variant>``).
    """

    def __init__(
        self,
        variant: str = "resnet",
        checkpoint: str | os.PathLike | None = "default",
        device: str = "auto",
        name: str = "",
    ) -> None:
        from ..optional import require

        medclip = require("medclip", "MedCLIP models (MC-RN50, MC-SwinT)")
        if variant not in VARIANTS:
            raise LvlmError(f"MedCLIP variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.name = name or f"medclip-{variant}"
        self.device = resolve_device(device)
        self.is_vit = variant == "swin"
        self.image_size = 224
        self.mean = (MEDCLIP_MEAN,) * 3
        self.std = (MEDCLIP_STD,) * 3
        path = _weights_file(variant, checkpoint)
        try:
            from transformers import AutoTokenizer

            vision_cls = getattr(medclip, VARIANTS[variant]["cls"])
            model = medclip.MedCLIPModel(vision_cls=vision_cls)
            self.tokenizer = hf_pretrained(
                AutoTokenizer.from_pretrained,
                medclip.constants.BERT_TYPE,
                what=f"{self.name} tokenizer",
                allow_patterns=["*.json", "*.txt"],
            )
        except LvlmError:  # our own one-line messages (the tokenizer through lvlm.weights)
            raise
        except Exception as exc:  # noqa: BLE001 - hub / torchvision downloads inside MedCLIP's constructors
            raise WeightsNotFoundError(
                f"{self.name}: MedCLIP builds its towers from Bio_ClinicalBERT (Hugging Face hub) and an "
                f"ImageNet backbone, which could not be loaded ({exc}); run once online to cache them"
            ) from None
        self.tokenizer.model_max_length = 77
        what = f"MedCLIP {variant} checkpoint"
        sd = load_state_dict(path, what=what)
        # strict=False: the position_ids buffers differ between transformers versions; shapes are checked
        missing, unexpected = load_into(model, sd, what=what, path=path, strict=False)
        bad = [k for k in list(missing) + list(unexpected) if not k.endswith("position_ids")]
        if bad:
            raise WeightsError(
                f"{what} {str(path)!r}: not a MedCLIP {variant} checkpoint ({len(bad)} mismatched "
                f"keys, e.g. {', '.join(repr(k) for k in bad[:3])})"
            )
        self.model = model.to(self.device).eval()
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MedClipModel({self.name!r}, device={self.device!r})"

    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor) or (isinstance(images, np.ndarray) and images.ndim == 4):
            x = torch.as_tensor(images)
            return self.preprocess_chw((x if x.ndim == 4 else x[None]).permute(0, 3, 1, 2).to(self.device))
        if isinstance(images, np.ndarray):
            images = [images]
        return torch.cat(
            [
                self.preprocess_chw(
                    torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].to(self.device)
                )
                for im in images
            ]
        )

    def preprocess_chw(self, x: torch.Tensor) -> torch.Tensor:
        """MedCLIP's transform on device: greyscale (PIL 'L'), pad to a centred square >= 224, resize to 224.

        Args:
            x: B x 3 x H x W uint8 (or 0-255 float) tensor on the model's device.
        """
        h, w = x.shape[-2:]
        size = max(self.image_size, h, w)
        left, top = int((size - w) / 2), int((size - h) / 2)
        xf = F.pad(x.float(), (left, size - w - left, top, size - h - top))
        if size != self.image_size:
            xf = F.interpolate(
                xf,
                size=(self.image_size, self.image_size),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            )
        return self.normalize(xf)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x 224 x 224 pixels (0-255) -> greyscale, normalised, repeated to 3 channels.

        Args:
            x: B x 3 x 224 x 224 pixels on the 0-255 scale.
        """
        x = x.round().clamp(0, 255)
        grey = (x[:, 0] * 299 + x[:, 1] * 587 + x[:, 2] * 114) / 1000.0
        grey = (grey.round() / 255.0 - MEDCLIP_MEAN) / MEDCLIP_STD
        return grey[:, None].repeat(1, 3, 1, 1)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.model.vision_model(pixel_values=pixels.to(self.device)).float()
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
            if missing:
                tok = self.tokenizer(missing, padding=True, truncation=True, return_tensors="pt")
                with (
                    torch.no_grad()
                ):  # call the text tower directly: MedCLIPModel.encode_text moves inputs to CUDA
                    feats = self.model.text_model(
                        tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
                    ).float()
                for t, f in zip(missing, feats):
                    self._text_cache[t] = f
            out = torch.stack([self._text_cache[t] for t in texts])
        return F.normalize(out, dim=-1) if normalize else out

    def cam_target_layer(self) -> torch.nn.Module:
        if self.is_vit:
            raise LvlmError(
                f"{self.name}: CAM methods are not supported on MedCLIP's Swin-T tower "
                "(the benchmark uses MedCLIP in the base pipeline only)"
            )
        return self.model.vision_model.model.layer4


@register(
    "clip",
    "MC-RN50",
    description="MedCLIP ResNet-50 (optional extra 'medclip')",
    source=(
        "MedCLIP package, ResNet-50 image tower + Bio_ClinicalBERT; data: MIMIC-CXR + CheXpert; licence: MIT"
    ),
)
def build_mc_rn50(checkpoint: str | None = "default", device: str = "auto") -> MedClipModel:
    """MC-RN50: MedCLIP with a ResNet-50 image tower.

    Args:
        checkpoint: ``default`` (``$LVLM_HOME/medclip-resnet/``, else the published zip), or a file / folder.
        device: torch device.
    """
    return MedClipModel("resnet", checkpoint=checkpoint, device=device, name="MC-RN50")


@register(
    "clip",
    "MC-SwinT",
    description="MedCLIP Swin-T (optional extra 'medclip')",
    source="MedCLIP package, Swin-T image tower + Bio_ClinicalBERT; data: MIMIC-CXR + CheXpert; licence: MIT",
)
def build_mc_swint(checkpoint: str | None = "default", device: str = "auto") -> MedClipModel:
    """MC-SwinT: MedCLIP with a Swin-T image tower.

    Args:
        checkpoint: ``default`` (``$LVLM_HOME/medclip-vit/``, else the published zip), or a file / folder.
        device: torch device.
    """
    return MedClipModel("swin", checkpoint=checkpoint, device=device, name="MC-SwinT")
