"""The CLIP presets table: preset name -> open_clip model name, pretrained tag, data and licence.

As open_clip's ``pretrained.py`` lists its tags, this module lists ours: one preset per CLIP backbone of
the benchmark's CLIP comparison table (``OA-RN50``, ``OA-ViT-B``, ``CC-RN50``, ``LA-ViT-B``, ``BC-ViT-B``,
..., named by pretraining data and backbone; docs/clip.md maps them to the papers' tables), plus tiny random
configs built from open_clip's real tower classes for tests. Nothing here imports open_clip;
:func:`presets_markdown` renders the table for the docs.
"""

from __future__ import annotations

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG_FILE = "open_clip_config.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

PRESETS: dict[str, dict[str, str]] = {
    "OA-RN50": {
        "model_name": "RN50",
        "pretrained": "openai",
        "backbone": "ResNet-50",
        "data": "OpenAI WIT (400M image-text pairs)",
        "licence": "MIT",
    },
    "OA-RN101": {
        "model_name": "RN101",
        "pretrained": "openai",
        "backbone": "ResNet-101",
        "data": "OpenAI WIT (400M image-text pairs)",
        "licence": "MIT",
    },
    "OA-ViT-B": {
        "model_name": "ViT-B-16",
        "pretrained": "openai",
        "backbone": "ViT-B/16",
        "data": "OpenAI WIT (400M image-text pairs)",
        "licence": "MIT",
    },
    "OA-ViT-L": {
        "model_name": "ViT-L-14",
        "pretrained": "openai",
        "backbone": "ViT-L/14",
        "data": "OpenAI WIT (400M image-text pairs)",
        "licence": "MIT",
    },
    "CC-RN50": {
        "model_name": "RN50",
        "pretrained": "cc12m",
        "backbone": "ResNet-50",
        "data": "Conceptual 12M (cc12m)",
        "licence": "MIT (open_clip weights)",
    },
    "LA-ViT-B": {
        "model_name": "ViT-B-16",
        "pretrained": "laion400m_e32",
        "backbone": "ViT-B/16",
        "data": "LAION-400M (32 epochs)",
        "licence": "MIT (open_clip weights)",
    },
    "BC-ViT-B": {
        "model_name": "hf-hub:imageomics/bioclip",
        "pretrained": "",
        "backbone": "ViT-B/16",
        "data": "TreeOfLife-10M (BioCLIP)",
        "licence": "MIT",
    },
    "BiomedCLIP": {
        "model_name": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "pretrained": "",
        "backbone": "ViT-B/16 + PubMedBERT",
        "data": "PMC-15M (PubMed Central figure-caption pairs)",
        "licence": "MIT",
    },
}


# Tiny random configs built from open_clip's real tower classes (ModifiedResNet, VisionTransformer).
_TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS: dict[str, dict] = {
    "tiny-rn": {
        "embed_dim": 32,
        "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "image_size": 64},
        "text_cfg": _TINY_TEXT,
    },
    "tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
            "image_size": 64,
            "mlp_ratio": 2.0,
        },
        "text_cfg": _TINY_TEXT,
    },
}


def source_line(preset: dict[str, str]) -> str:
    """``open_clip RN50 / openai; data: ...; licence: ...`` (the ``source`` column of ``lvlm list clip``).

    Args:
        preset: a preset dict (``model_name``, ``pretrained``, ``data``, ``licence``).
    """
    oc_name = preset["model_name"] + (f" / {preset['pretrained']}" if preset["pretrained"] else "")
    return f"open_clip {oc_name}; data: {preset['data']}; licence: {preset['licence']}"


def presets_markdown() -> str:
    """The presets as a Markdown table (preset, backbone, open_clip model / tag, data, licence) for the
    docs."""
    rows = [
        "| preset | backbone | open_clip model / pretrained tag | data | licence |",
        "|---|---|---|---|---|",
    ]
    for name, p in PRESETS.items():
        tag = f"`{p['model_name']}`" + (f" / `{p['pretrained']}`" if p["pretrained"] else "")
        rows.append(f"| `{name}` | {p['backbone']} | {tag} | {p['data']} | {p['licence']} |")
    return "\n".join(rows) + "\n"
