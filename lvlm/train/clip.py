"""Domain CLIP training (Villarreal et al. section III-B): optional autoencoder pre-training, then contrastive
training.

The result is an open_clip ``local-dir`` model (``open_clip_config.json`` + ``open_clip_model.safetensors``)
that ``open_clip.create_model("local-dir:DIR")``, the CLIP presets (``{name: open_clip, model_name: DIR}``),
the CLIP selector and gScoreCAM load by path.

Villarreal et al. Table II settings are named presets (``--setting 1..7``); any open_clip architecture
name or a custom model config (JSON) can be the model. Data: a CSV / JSONL manifest of
``image,text`` pairs, a MIMIC-CXR-JPG tree, or generated shapes scenes (``scenes:N``).

    lvlm train clip --data scenes:6000 --model-config lvlm/assets/lvlm_shapes/train_config.json \\
        --train both --init scratch --epochs 12 --out runs/shapes
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LvlmError
from ..fsutil import atomic_write, atomic_write_json
from ..optional import has
from .loop import TrainLoop, plot_curves

# Villarreal et al. Table II: (image encoder, initialisation, trained parts). "autoencoder" = AE pre-training
# on the domain images first (Table I), "scratch" = random ("FS"), "imagenet" = ImageNet weights ("FP").
SETTINGS: dict[int, dict[str, str]] = {
    1: {"model": "swin-t", "init": "autoencoder", "train": "heads"},
    2: {"model": "swin-t", "init": "autoencoder", "train": "image"},
    3: {"model": "swin-t", "init": "autoencoder", "train": "both"},
    4: {"model": "swin-t", "init": "scratch", "train": "image"},
    5: {"model": "swin-t", "init": "imagenet", "train": "image"},
    6: {"model": "rn50", "init": "scratch", "train": "image"},
    7: {"model": "rn50", "init": "imagenet", "train": "image"},
}
TRAIN_PARTS = ("heads", "image", "both")
AUGMENTS = ("flip", "dihedral", "none")
INITS = ("scratch", "autoencoder", "imagenet")

# image encoder names -> open_clip vision config (text tower comes from --text-model)
IMAGE_ENCODERS: dict[str, dict[str, Any]] = {
    "rn50": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64},
    "vit-b-16": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
    "swin-t": {
        "image_size": 224,
        "timm_model_name": "swin_tiny_patch4_window7_224",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
    },
}
# ImageNet weights per encoder for "FP" (timm / torchvision names resolved through their own caches)
IMAGENET = {
    "rn50": "torchvision resnet50 IMAGENET1K_V1",
    "swin-t": "timm swin_tiny_patch4_window7_224",
    "vit-b-16": "timm vit_base_patch16_224",
}


@dataclass
class ClipTrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory."""

    data: str = ""
    out: str = "runs/clip"
    model: str = ""  # open_clip architecture name (e.g. RN50) or an image-encoder key of IMAGE_ENCODERS
    model_config: str = ""  # JSON file of an open_clip model config (embed_dim, vision_cfg, text_cfg)
    text_model: str = "RN50"  # open_clip architecture whose text tower is used with an IMAGE_ENCODERS key
    text_pretrained: str = ""  # open_clip pretrained tag of the text tower (e.g. openai); "" = random
    setting: int = 0  # Villarreal et al. Table II preset (overrides model / init / train)
    init: str = "scratch"
    train: str = "image"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    ae_epochs: int = 10
    ae_lr: float = 1e-3
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    max_samples: int = 0
    init_from: str = (
        ""  # start from the weights of an open_clip model dir / file (fine-tuning, warm restarts)
    )
    group_positives: bool = False  # pairs with the same class (or caption) are positives of each other
    augment: str = "flip"  # "flip" (random horizontal flips), "dihedral" (flips and 90-degree turns), "none"
    scene_black_prob: float = 0.25  # scenes:N only: chance that all but the captioned object is blacked out
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ data


class PairSource:
    """Image-text pairs: ``images[i]`` (path or array) with ``texts[i]``; ``labels`` optional class ids.

    Args:
        images: image paths or H x W x 3 uint8 arrays.
        texts: one caption per image.
        labels: one class id per image (pairs of one class are positives of each other with
            ``group_positives``), or None.
        label_texts: the class texts that retrieval is scored against when ``labels`` is given.
    """

    def __init__(
        self,
        images: list[Any],
        texts: list[str],
        labels: list[int] | None = None,
        label_texts: list[str] | None = None,
    ):
        if len(images) != len(texts):
            raise ConfigError(f"{len(images)} images but {len(texts)} texts")
        self.images, self.texts, self.labels, self.label_texts = images, texts, labels, label_texts

    def __len__(self) -> int:
        return len(self.images)

    def split(self, val_fraction: float, seed: int) -> tuple[PairSource, PairSource]:
        """``(train, val)`` split: a ``val_fraction`` of the pairs (at least one) drawn with ``seed``.

        Args:
            val_fraction: the fraction of pairs for validation.
            seed: the random seed of the permutation.
        """
        idx = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, round(len(self) * val_fraction)) if len(self) > 1 else 0
        return self.subset(idx[n_val:]), self.subset(idx[:n_val])

    def subset(self, idx) -> PairSource:
        """The pairs at ``idx``, in that order.

        Args:
            idx: pair indices.
        """
        return PairSource(
            [self.images[i] for i in idx],
            [self.texts[i] for i in idx],
            None if self.labels is None else [self.labels[i] for i in idx],
            self.label_texts,
        )


def load_pairs(data: str, max_samples: int = 0, seed: int = 0, scene_black_prob: float = 0.25) -> PairSource:
    """Pairs from ``scenes:N``, a ``.csv`` / ``.jsonl`` manifest (image, text columns) or a MIMIC-CXR-JPG
    root.

    Args:
        data: ``scenes:N`` (N synthetic scenes), a manifest path or a MIMIC-CXR-JPG root folder.
        max_samples: keep a random ``max_samples`` pairs (0: all).
        seed: the random seed of the scenes and of the ``max_samples`` draw.
        scene_black_prob: ``scenes:N`` only: the chance that all but the captioned object is blacked out.
    """
    if data.startswith("scenes:"):
        from tqdm.auto import tqdm

        from ..data.synthetic import all_captions, training_pairs

        try:
            n = int(data.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"training data {data!r}: give scenes:N with N a number of scenes") from None
        imgs, texts, labels = [], [], []
        for img, cap, lab in tqdm(
            training_pairs(range(n), rng_seed=seed, black_prob=scene_black_prob),
            total=n,
            desc="generating scenes",
            unit="scene",
            leave=False,
        ):
            imgs.append(img)
            texts.append(cap)
            labels.append(lab)
        return PairSource(imgs, texts, labels, all_captions())
    p = Path(data)
    if not p.exists():
        raise LvlmError(
            f"training data {data!r} not found: give scenes:N, a .csv/.jsonl manifest with 'image' and "
            "'text' columns, or a MIMIC-CXR-JPG root (files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg with reports)"
        )
    if p.is_file():
        rows = _read_manifest(p)
        base = p.parent
        images = [
            str((base / r["image"]) if not Path(r["image"]).is_absolute() else r["image"]) for r in rows
        ]
        texts = [r["text"] for r in rows]
    else:
        images, texts = _mimic_pairs(p)
    if max_samples:
        keep = np.random.default_rng(seed).permutation(len(images))[:max_samples]
        images, texts = [images[i] for i in keep], [texts[i] for i in keep]
    return PairSource(images, texts)


def _read_manifest(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise LvlmError(f"{path}: manifest must be .csv or .jsonl")
    for i, r in enumerate(rows):
        if "image" not in r or "text" not in r:
            raise LvlmError(f"{path}: row {i + 1} lacks 'image' or 'text' (has {sorted(r)})")
    return rows


def _mimic_pairs(root: Path) -> tuple[list[str], list[str]]:
    """MIMIC-CXR-JPG: ``files/pXX/pSUBJECT/sSTUDY/*.jpg``; reports ``.../pSUBJECT/sSTUDY.txt`` under the root
    or a ``mimic-cxr-reports`` folder beside ``files`` (FINDINGS + IMPRESSION sections are the text)."""
    files = root / "files" if (root / "files").is_dir() else root
    report_roots = [files, root / "mimic-cxr-reports" / "files", root.parent / "mimic-cxr-reports" / "files"]
    images, texts = [], []
    for study in sorted(files.glob("p*/p*/s*")):
        if not study.is_dir():
            continue
        rel = study.relative_to(files)
        report = next(
            (
                r / rel.parent / f"{study.name}.txt"
                for r in report_roots
                if (r / rel.parent / f"{study.name}.txt").is_file()
            ),
            None,
        )
        if report is None:
            continue
        text = report_text(report.read_text(errors="replace"))
        for jpg in sorted(study.glob("*.jpg")):
            images.append(str(jpg))
            texts.append(text)
    if not images:
        raise LvlmError(
            f"{root}: no MIMIC-CXR-JPG studies with reports found (expected files/pXX/pSUBJECT/sSTUDY/*.jpg "
            "and reports sSTUDY.txt; dataset: https://physionet.org/content/mimic-cxr-jpg/)"
        )
    return images, texts


def report_text(report: str) -> str:
    """FINDINGS and IMPRESSION sections of a radiology report (the whole text when they are absent).

    Args:
        report: the radiology report's text.
    """
    import re

    sections = {}
    for m in re.finditer(
        r"^\s*([A-Z][A-Z /]+):(.*?)(?=^\s*[A-Z][A-Z /]+:|\Z)", report, flags=re.DOTALL | re.MULTILINE
    ):
        sections[m.group(1).strip()] = " ".join(m.group(2).split())
    parts = [sections[k] for k in ("FINDINGS", "IMPRESSION") if sections.get(k)]
    return " ".join(parts) if parts else " ".join(report.split())


# ----------------------------------------------------------------------------------------- model


def build_model(cfg: ClipTrainConfig):
    """The open_clip model to train and its model config dict (saved with the weights).

    Args:
        cfg: the run's config (``model`` / ``model_config``, ``text_model``, ``init``...).
    """
    import open_clip

    if cfg.model_config:
        model_cfg = json.loads(Path(cfg.model_config).read_text())
        model_cfg = model_cfg.get("model_cfg", model_cfg)
    elif cfg.model.lower() in IMAGE_ENCODERS:
        text_cfg = open_clip.get_model_config(cfg.text_model)
        if text_cfg is None:
            raise ConfigError(f"unknown open_clip text model {cfg.text_model!r}")
        model_cfg = {
            "embed_dim": text_cfg["embed_dim"],
            "vision_cfg": dict(IMAGE_ENCODERS[cfg.model.lower()]),
            "text_cfg": text_cfg["text_cfg"],
        }
        if cfg.init == "imagenet" and "timm_model_name" in model_cfg["vision_cfg"]:
            model_cfg["vision_cfg"]["timm_model_pretrained"] = True
    else:
        model_cfg = open_clip.get_model_config(cfg.model)
        if model_cfg is None:
            raise ConfigError(
                f"unknown model {cfg.model!r}; give an open_clip architecture "
                f"({', '.join(open_clip.list_models()[:8])}, ...), one of {', '.join(IMAGE_ENCODERS)}, "
                "or --model-config FILE"
            )
    model = open_clip.CLIP(**model_cfg)
    if cfg.init == "imagenet" and "timm_model_name" not in model_cfg["vision_cfg"]:
        _load_imagenet_resnet(model)
    if cfg.text_pretrained:
        _load_text_tower(model, cfg.text_model, cfg.text_pretrained)
    return model, model_cfg


def _load_imagenet_resnet(model) -> None:
    """FP for ResNet-50: torchvision's ImageNet weights into the matching modules of open_clip's
    ModifiedResNet (stem and bottlenecks share shapes where the architectures agree; the rest stays
    random)."""
    import torchvision

    from ..weights import WeightSpec, resolve

    spec = WeightSpec(
        "resnet50-0676ba61.pth",
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        license="BSD-3-Clause (torchvision)",
    )
    from ..weights import load_state_dict

    tv = torchvision.models.resnet50()
    tv.load_state_dict(load_state_dict(resolve(spec)))
    own = model.visual.state_dict()
    loaded = 0
    for k, v in tv.state_dict().items():
        if k in own and own[k].shape == v.shape:
            own[k] = v
            loaded += 1
    model.visual.load_state_dict(own)


def _load_text_tower(model, text_model: str, pretrained: str) -> None:
    """Copy the text tower of a pretrained open_clip model (resolved offline-safely by the CLIP presets)."""
    from ..registry import build

    src = build("clip", "open_clip", model_name=text_model, pretrained=pretrained, device="cpu").model
    own = model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("visual.") and k in own and own[k].shape == v.shape:
            own[k] = v
    model.load_state_dict(own)


def set_trainable(model, train: str) -> list[str]:
    """Freeze all but the parts ``train`` names; returns the names of trainable parameters.

    heads: image and text projections (+ logit scale); image: heads + image encoder; both: everything.

    Args:
        model: the open_clip model.
        train: one of ``TRAIN_PARTS``: ``heads``, ``image`` or ``both``.
    """
    if train not in TRAIN_PARTS:
        raise ConfigError(f"train={train!r}; valid: {', '.join(TRAIN_PARTS)}")
    names = []
    for name, p in model.named_parameters():
        is_visual = name.startswith("visual.")
        is_head = name in ("text_projection", "logit_scale") or name.startswith(
            ("visual.proj", "visual.attnpool.c_proj", "visual.head", "visual.trunk.head")
        )
        on = train == "both" or is_head or (train == "image" and is_visual)
        p.requires_grad_(on)
        if on:
            names.append(name)
    return names


# -------------------------------------------------------------------------------------- training


class _Batches:
    """Preprocessed image tensors and tokenised texts, produced on the fly in batches."""

    def __init__(self, pairs: PairSource, image_size: int, mean, std, tokenizer, augment: str):
        self.pairs, self.image_size, self.tokenizer, self.augment = pairs, image_size, tokenizer, augment
        import torch

        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def images(self, idx: Sequence[int], rng: np.random.Generator | None = None):
        import torch
        import torch.nn.functional as F

        from ..io import load_image

        arrs = []
        for i in idx:
            a = self.pairs.images[i]
            arrs.append(load_image(a) if not isinstance(a, np.ndarray) else a)
        ts = []
        for a in arrs:
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().unsqueeze(0) / 255.0
            if t.shape[-2:] != (self.image_size, self.image_size):
                t = F.interpolate(
                    t,
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            ts.append(t)
        x = torch.cat(ts)
        if self.augment in ("flip", "dihedral") and rng is not None:
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(-1)
        if self.augment == "dihedral" and rng is not None:  # with the flips: all 8 symmetries of the square
            turns = rng.integers(0, 4, len(idx))
            for k in (1, 2, 3):
                sel = torch.from_numpy(turns == k)
                if sel.any():
                    x[sel] = torch.rot90(x[sel], k, (2, 3))
        return (x - self.mean) / self.std

    def texts(self, idx: Sequence[int]):
        return self.tokenizer([self.pairs.texts[i] for i in idx])


def _clip_loss(model, images, tokens, groups=None):
    """Symmetric InfoNCE. With ``groups`` (one id per pair: the class, or the caption), items of a batch
    that share a group are all positives of each other (soft targets) instead of false negatives."""
    import torch
    import torch.nn.functional as F

    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    if groups is None:
        target = torch.arange(len(img), device=img.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    g = torch.as_tensor(groups, device=img.device)
    same = (g[:, None] == g[None, :]).float()
    soft = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2


def _caption_ids(texts: list[str]) -> list[int]:
    ids: dict[str, int] = {}
    return [ids.setdefault(t, len(ids)) for t in texts]


def _autoencoder_pretrain(
    model, batches: _Batches, n: int, cfg: ClipTrainConfig, device: str, log
) -> list[float]:
    """Villarreal et al. Table I: the image tower encodes, a small decoder reconstructs, MSE,
    Adam (lr 1e-3)."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    emb_dim = model.visual.output_dim
    s = batches.image_size
    base = max(s // 32, 2)
    decoder = nn.Sequential(
        nn.Linear(emb_dim, 64 * base * base),
        nn.Unflatten(1, (64, base, base)),
        nn.ReLU(),
        nn.Upsample(size=(s // 4, s // 4), mode="bilinear"),
        nn.Conv2d(64, 32, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(size=(s, s), mode="bilinear"),
        nn.Conv2d(32, 3, 3, padding=1),
    ).to(device)
    params = list(model.visual.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.ae_lr)
    rng = np.random.default_rng(cfg.seed)
    losses = []
    for ep in range(cfg.ae_epochs):
        order = rng.permutation(n)
        tot = 0.0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"autoencoder {ep + 1}/{cfg.ae_epochs}", leave=False)
        for b in bar:
            x = batches.images(order[b : b + cfg.batch_size]).to(device)
            rec = decoder(model.visual(x))
            loss = torch.nn.functional.mse_loss(rec, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss) * len(x)
        losses.append(tot / n)
        log({"stage": "autoencoder", "epoch": ep + 1, "loss": losses[-1]})
    return losses


def evaluate(model, batches: _Batches, device: str, batch_size: int = 256) -> dict[str, float]:
    """Validation loss (in batches) and top-1 retrieval: image -> its text among all distinct val texts
    (or among the class label texts when the data has labels).

    Args:
        model: the open_clip model.
        batches: the validation pairs, preprocessed in batches.
        device: the model's device.
        batch_size: pairs per forward pass.
    """
    import torch

    n = len(batches.pairs)
    if n == 0:
        return {"val_loss": float("nan"), "retrieval_top1": float("nan")}
    model.eval()
    losses, feats = [], []
    with torch.no_grad():
        for b in range(0, n, batch_size):
            idx = list(range(b, min(n, b + batch_size)))
            x = batches.images(idx).to(device)
            t = batches.texts(idx).to(device)
            if len(idx) > 1:
                losses.append(float(_clip_loss(model, x, t)) * len(idx))
            feats.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1))
        img = torch.cat(feats)
        if batches.pairs.labels is not None and batches.pairs.label_texts:
            cand = batches.pairs.label_texts
            target = torch.tensor(batches.pairs.labels, device=device)
        else:
            cand = sorted(set(batches.pairs.texts))
            pos = {c: i for i, c in enumerate(cand)}
            target = torch.tensor([pos[t] for t in batches.pairs.texts], device=device)
        txt = torch.nn.functional.normalize(model.encode_text(batches.tokenizer(cand).to(device)), dim=-1)
        top1 = float(((img @ txt.T).argmax(1) == target).float().mean())
    model.train()
    val_loss = sum(losses) / max(1, n if len(losses) else 1)
    return {"val_loss": val_loss if losses else float("nan"), "retrieval_top1": top1}


def train_clip(
    cfg: ClipTrainConfig,
    pairs: PairSource | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a CLIP training; returns the final metrics (also written to ``metrics.json``).

    ``stop_after_steps`` interrupts the run after that many optimiser steps (used to test resuming).

    Args:
        cfg: the run's config (its ``out`` directory resumes when it holds ``last.pt``).
        pairs: the image-text pairs, or None to load ``cfg.data`` with :func:`load_pairs`.
        progress: show progress bars.
        stop_after_steps: stop after this many optimiser steps, or None to run to the end.
    """
    import open_clip
    import torch
    from tqdm.auto import tqdm

    from ..components import resolve_device

    if cfg.setting:
        if cfg.setting not in SETTINGS:
            raise ConfigError(
                f"setting {cfg.setting} unknown; valid: {', '.join(map(str, SETTINGS))} "
                f"(Villarreal et al. Table II)"
            )
        s = SETTINGS[cfg.setting]
        cfg.model, cfg.init, cfg.train = s["model"], s["init"], s["train"]
    if cfg.init not in INITS:
        raise ConfigError(f"init={cfg.init!r}; valid: {', '.join(INITS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    if not 0.0 <= cfg.scene_black_prob <= 1.0:
        raise ConfigError(f"scene_black_prob={cfg.scene_black_prob!r}: expected a probability in [0, 1]")
    if pairs is None:
        pairs = load_pairs(cfg.data, cfg.max_samples, cfg.seed, cfg.scene_black_prob)
    if cfg.data.startswith("scenes:") and pairs.labels is not None:
        # generated data: validate on held-out single-object scenes, where the caption is unambiguous
        from ..data.synthetic import all_captions, training_pairs

        n_val = max(2, int(len(pairs) * cfg.val_fraction))
        val = list(
            training_pairs(
                range(5_000_000, 5_000_000 + n_val), rng_seed=cfg.seed, black_prob=0.0, n_objects=1
            )
        )
        train_pairs = pairs
        val_pairs = PairSource([v[0] for v in val], [v[1] for v in val], [v[2] for v in val], all_captions())
    else:
        train_pairs, val_pairs = pairs.split(cfg.val_fraction, cfg.seed)
    model, model_cfg = build_model(cfg)
    if cfg.init_from:
        from ..weights import load_state_dict

        src = Path(cfg.init_from)
        src = src / "open_clip_model.safetensors" if src.is_dir() else src
        model.load_state_dict(load_state_dict(src))
    model.to(device)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    tokenizer = open_clip.get_tokenizer(
        "RN50", context_length=model_cfg["text_cfg"].get("context_length", 77)
    )
    if cfg.augment not in AUGMENTS:
        raise ConfigError(f"augment={cfg.augment!r}; valid: {', '.join(AUGMENTS)}")
    train_b = _Batches(train_pairs, image_size, mean, std, tokenizer, augment=cfg.augment)
    val_b = _Batches(val_pairs, image_size, mean, std, tokenizer, augment="none")

    log_path = out / "log.jsonl"
    atomic_write_json(out / "config.json", asdict(cfg), indent=2)

    def log(row):
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def score(m: dict[str, Any]) -> float:
        return m["retrieval_top1"] if not math.isnan(m["retrieval_top1"]) else -m["val_loss"]

    def save_best(epoch: int, m: dict[str, Any]) -> None:
        save_open_clip(
            model,
            model_cfg,
            out / "best",
            image_size=image_size,
            mean=mean,
            std=std,
            meta={"epoch": epoch, **{k: v for k, v in m.items() if k not in ("epoch", "seconds")}},
        )

    resumed = (out / "last.pt").is_file()
    if not resumed and cfg.init == "autoencoder":
        _autoencoder_pretrain(model, train_b, len(train_pairs), cfg, device, log)
    trainable = set_trainable(model, cfg.train)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_pairs) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    steps = {"step": 0}

    def state() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": steps["step"],
        }

    def load(ck: dict[str, Any]) -> None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        steps["step"] = int(ck["step"])

    loop = TrainLoop(out, cfg.epochs, state, load, score=score, on_best=save_best)
    if resumed:
        loop.resume(map_location=device)
    loop.begin({"train_loss": float("nan"), **evaluate(model, val_b, device)}, candidate=False)
    model.train()

    def one_epoch(epoch: int) -> dict[str, Any]:
        rng = np.random.default_rng((cfg.seed, epoch - 1))
        order = rng.permutation(len(train_pairs))
        tot, seen = 0.0, 0
        t0 = time.time()
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"clip epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        for b in bar:
            idx = order[b : b + cfg.batch_size]
            if len(idx) < 2:
                continue
            groups = None
            if cfg.group_positives:
                groups = (
                    [train_pairs.labels[i] for i in idx]
                    if train_pairs.labels is not None
                    else _caption_ids([train_pairs.texts[i] for i in idx])
                )
            loss = _clip_loss(
                model, train_b.images(idx, rng).to(device), train_b.texts(idx).to(device), groups
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            steps["step"] += 1
            tot += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if stop_after_steps is not None and steps["step"] >= stop_after_steps:
                raise KeyboardInterrupt(f"stopped after {steps['step']} steps")
        return {
            "train_loss": tot / max(1, seen),
            **evaluate(model, val_b, device),
            "seconds": time.time() - t0,
        }

    history = loop.run(one_epoch, on_epoch_end=lambda m: log({"stage": "clip", **m}))
    final = {
        "best_dir": str(out / "best"),
        "epochs": cfg.epochs,
        "trainable_parameters": len(trainable),
        "first_val_loss": history[0]["val_loss"],
        "final_val_loss": history[-1]["val_loss"],
        "val_loss_reduction": history[0]["val_loss"] - history[-1]["val_loss"],
        "retrieval_top1": history[-1]["retrieval_top1"],
        "best_retrieval_top1": max(h["retrieval_top1"] for h in history),
    }
    atomic_write_json(out / "metrics.json", final, indent=2)
    if has("matplotlib"):
        plot_curves({"": history}, out / "curves.png", CURVES, label="")
    return final


def save_open_clip(
    model, model_cfg: dict, directory: Path, image_size: int, mean, std, meta: dict | None = None
) -> Path:
    """Write an open_clip ``local-dir`` model: ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    Args:
        model: the trained open_clip model.
        model_cfg: its open_clip model config dict.
        directory: the output folder (created).
        image_size: the input size of the preprocessing config.
        mean: per-channel normalisation mean of the preprocessing config.
        std: per-channel normalisation std of the preprocessing config.
        meta: extra information stored under ``lvlm`` in ``open_clip_config.json``, or None.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "size": image_size,
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    if meta:
        cfg["lvlm"] = meta
    atomic_write_json(directory / "open_clip_config.json", cfg, indent=2)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / "open_clip_model.safetensors", save(sd))
    return directory


#: Panels of ``curves.png``: train / validation loss and validation retrieval accuracy per epoch.
CURVES = (("CLIP loss", ("train_loss", "val_loss")), ("retrieval top-1 (val)", ("retrieval_top1",)))


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(p) -> None:
    """Add the options of ``lvlm train clip`` to ``p``.

    Args:
        p: the ``argparse`` (sub)parser.
    """
    p.add_argument(
        "--data", required=True, help="scenes:N, a .csv/.jsonl manifest (image,text), or a MIMIC-CXR-JPG root"
    )
    p.add_argument("--out", default="runs/clip", help="run directory (resumes when it holds last.pt)")
    p.add_argument(
        "--setting",
        type=int,
        default=0,
        help="Villarreal et al. Table II preset 1-7 (sets model, init, train)",
    )
    p.add_argument(
        "--model", default="", help=f"open_clip architecture or one of {', '.join(IMAGE_ENCODERS)}"
    )
    p.add_argument("--model-config", default="", help="open_clip model config JSON (custom architecture)")
    p.add_argument("--text-model", default="RN50", help="open_clip architecture whose text tower is used")
    p.add_argument("--text-pretrained", default="", help="pretrained tag of the text tower (e.g. openai)")
    p.add_argument("--init", default="scratch", choices=INITS)
    p.add_argument("--train", default="image", choices=TRAIN_PARTS, help="parts to update")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ae-epochs", type=int, default=10)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--max-samples", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--init-from", default="", help="start from these open_clip weights (a model dir or file)")
    p.add_argument(
        "--group-positives",
        action="store_true",
        help="pairs of the same class / caption in a batch are positives, not negatives",
    )
    p.add_argument(
        "--augment",
        default="flip",
        choices=AUGMENTS,
        help="flip: random horizontal flips; dihedral: flips and 90-degree turns (images with no "
        "canonical orientation: generated shapes, microscopy, tiles); none",
    )
    p.add_argument(
        "--scene-black-prob",
        type=float,
        default=0.25,
        help="scenes:N only: chance that all but the captioned object is blacked out",
    )


def run(args) -> int:
    """``lvlm train clip``: train from the parsed options and print the final metrics; returns the exit
    status.

    Args:
        args: the parsed options of :func:`add_arguments`.
    """
    cfg = ClipTrainConfig(
        data=args.data,
        out=args.out,
        setting=args.setting,
        model=args.model,
        model_config=args.model_config,
        text_model=args.text_model,
        text_pretrained=args.text_pretrained,
        init=args.init,
        train=args.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ae_epochs=args.ae_epochs,
        val_fraction=args.val_fraction,
        max_samples=args.max_samples,
        seed=args.seed,
        device=args.device,
        init_from=args.init_from,
        group_positives=args.group_positives,
        augment=args.augment,
        scene_black_prob=args.scene_black_prob,
    )
    if not cfg.model and not cfg.model_config and not cfg.setting:
        raise ConfigError("give --setting N, --model NAME or --model-config FILE")
    final = train_clip(cfg)
    print(json.dumps(final, indent=2))
    return 0
