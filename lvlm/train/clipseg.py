"""``lvlm train clipseg``: fine-tune the CLIPSeg decoder on image + text + mask data (the CLIPSeg drywall
report's recipe).

The CLIP encoder is frozen (every parameter whose name contains ``clip``), the decoder is trained with
BCE + Dice on ``image_size`` x ``image_size`` inputs, each training sample paired with a prompt drawn from
its class's phrasings (prompt augmentation). Every epoch: validation mIoU / Dice at the source resolution,
``last.pt`` (decoder, optimizer, scheduler, epoch, RNG states: ``--resume`` continues it exactly) and, when
the validation mIoU improves, ``best_decoder.safetensors`` (decoder only). At the end, the best decoder
predicts the validation set (``predictions/{id}_{prompt_slug}.png`` at the source resolution) and the
per-class table (Class | mIoU | Dice | Samples), per-sample scores and training curves are written.

Python API: :func:`train_clipseg` (several seeds) and :class:`ClipSegTrainer` (one seed).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LvlmError
from ..fsutil import atomic_write, atomic_write_json
from ..metrics import bce_dice_loss, dice, iou
from .loop import TrainLoop, plot_curves, write_csv

#: The CLIPSeg drywall report section 2.4: phrasings per class, one drawn at random for every training sample.
DRYWALL_PROMPTS: dict[str, list[str]] = {
    "taping": ["segment taping area", "segment joint tape", "segment drywall seam", "segment wall joint"],
    "crack": ["segment crack", "segment wall crack", "segment surface crack", "segment fracture"],
}

#: The CLIPSeg drywall report table 1.
DRYWALL_RECIPE = {
    "epochs": 20,
    "batch_size": 16,
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "image_size": 352,
    "seeds": (42, 123, 7),
    "threshold": 0.5,
}

LAST = "last.pt"
BEST = "best_decoder.safetensors"


# --- data -------------------------------------------------------------------------------------------


def _as_list(samples: Iterable) -> list:
    return samples if isinstance(samples, list) else list(samples)


def sample_class(sample) -> str:
    """The group a sample is reported under: ``tags['class']``, else its prompt.

    Args:
        sample: a :class:`~lvlm.data.base.Sample`.
    """
    return str((sample.tags or {}).get("class") or sample.prompt)


def prompt_options(sample, prompt_map: dict[str, list[str]] | None, augment: bool = True) -> list[str]:
    """The phrasings a training sample draws from.

    ``prompt_map``'s list for the sample's class (or the list holding its prompt), else the sample's own
    alternatives (``Sample.prompts``), else its prompt; only the prompt when ``augment`` is False.

    Args:
        sample: the training sample.
        prompt_map: ``{class: [phrasings]}``, or None.
        augment: False keeps only the sample's own prompt.
    """
    if not augment:
        return [sample.prompt]
    cls = str((sample.tags or {}).get("class", "")).lower()
    for key, opts in (prompt_map or {}).items():
        if key.lower() == cls or sample.prompt in opts:
            return list(opts)
    if sample.prompts:
        return list(dict.fromkeys([sample.prompt, *sample.prompts]))
    return [sample.prompt]


def _load_mask(mask) -> np.ndarray:
    from ..io import load_mask

    if isinstance(mask, (str, os.PathLike)):
        return load_mask(mask)
    return np.asarray(mask, bool)


class _SampleSet:
    """torch Dataset view of Samples: normalised pixels, the target at the training size, the source mask."""

    def __init__(self, samples: list, image_processor, image_size: int, source_masks: bool) -> None:
        self.samples = samples
        self.image_processor = image_processor
        self.image_size = image_size
        self.source_masks = source_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch
        from PIL import Image

        from ..io import load_image

        s = self.samples[i]
        img = load_image(s.image)
        mask = _load_mask(s.mask)
        if mask.shape != img.shape[:2]:
            raise LvlmError(f"sample {s.id}: mask shape {mask.shape} != image shape {img.shape[:2]}")
        size = {"height": self.image_size, "width": self.image_size}
        px = self.image_processor(images=[img], size=size, return_tensors="pt")["pixel_values"][0]
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (self.image_size, self.image_size), Image.NEAREST
        )
        out = {"pixels": px, "target": torch.from_numpy(np.asarray(small) > 127).float(), "index": i}
        if self.source_masks:
            out["mask"] = torch.from_numpy(mask)
        return out


def _collate(items: list[dict]) -> dict[str, Any]:
    import torch

    out = {
        "pixels": torch.stack([it["pixels"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "index": [it["index"] for it in items],
    }
    if "mask" in items[0]:
        out["mask"] = [it["mask"] for it in items]
    return out


# --- one seed ---------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    loss: float
    miou: float
    dice: float
    records: list[dict[str, Any]] = field(default_factory=list)  # id, class, prompt, iou, dice per sample


class ClipSegTrainer:
    """One training run (one seed) of the CLIPSeg decoder; see the module docstring for what it writes.

    Args:
        train: the training samples (image, mask, prompt).
        val: the validation samples; the best checkpoint is chosen by their mIoU.
        out_dir: the run's folder (``last.pt``, the best decoder, history, tables).
        model: the transformers CLIPSeg id or folder (None: ``DEFAULT_MODEL``).
        seed: seeds Python, NumPy and torch at the start of the run.
        epochs: training epochs (cosine learning-rate schedule over them).
        batch_size: samples per optimiser step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        image_size: the model input side in pixels.
        prompt_map: ``{class: [phrasings]}`` for prompt augmentation (None: ``DRYWALL_PROMPTS``).
        augment: draw a random phrasing per training sample; False uses each sample's prompt.
        threshold: the probability threshold of the predicted masks.
        device: ``auto``, ``cpu``, ``cuda``...
        num_workers: data-loader worker processes.
        amp: mixed precision (None: on for CUDA; never on the CPU).
        progress: print one line per epoch and show progress bars.
    """

    def __init__(
        self,
        train: Iterable,
        val: Iterable,
        out_dir: str | os.PathLike,
        model: str | None = None,
        seed: int = 42,
        epochs: int = 20,
        batch_size: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        image_size: int = 352,
        prompt_map: dict | None = None,
        augment: bool = True,
        threshold: float = 0.5,
        device: str = "auto",
        num_workers: int = 0,
        amp: bool | None = None,
        progress: bool = True,
    ) -> None:
        import torch

        from ..components import resolve_device
        from ..segmenters.clipseg import DEFAULT_MODEL, load_clipseg

        self.train_samples, self.val_samples = _as_list(train), _as_list(val)
        if not self.train_samples:
            raise ConfigError("no training samples")
        if not self.val_samples:
            raise ConfigError("no validation samples (the best checkpoint is chosen by validation mIoU)")
        if epochs < 1 or batch_size < 1 or image_size < 8 or not 0 < threshold < 1:
            raise ConfigError(
                f"bad settings: epochs={epochs}, batch_size={batch_size}, image_size={image_size}, "
                f"threshold={threshold}"
            )
        self.out = Path(out_dir)
        self.model_name = str(model or DEFAULT_MODEL)
        self.seed, self.epochs, self.batch_size = int(seed), int(epochs), int(batch_size)
        self.lr, self.weight_decay, self.image_size = float(lr), float(weight_decay), int(image_size)
        self.threshold = float(threshold)
        self.device = resolve_device(device)
        self.num_workers = int(num_workers)
        self.amp = (self.device.startswith("cuda") if amp is None else bool(amp)) and self.device.startswith(
            "cuda"
        )
        self.progress = progress
        self.prompt_map = DRYWALL_PROMPTS if prompt_map is None else dict(prompt_map)

        # the CLIPSeg drywall report section 8: every generator seeded at the start of the run
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.shuffle_gen = torch.Generator().manual_seed(self.seed)
        self.prompt_rng = random.Random(self.seed)

        self.net, self.processor = load_clipseg(self.model_name)
        for name, param in self.net.named_parameters():  # the CLIPSeg drywall report section 2.2
            if "clip" in name.lower():
                param.requires_grad = False
        self.net.to(self.device)
        self.trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.lr, weight_decay=self.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.epochs)

        self.options = [prompt_options(s, self.prompt_map, augment) for s in self.train_samples]
        texts = list(
            dict.fromkeys([t for o in self.options for t in o] + [s.prompt for s in self.val_samples])
        )
        self.text_emb = self._embed_texts(texts)
        self.loop = TrainLoop(
            self.out,
            self.epochs,
            self._state,
            self._load_state,
            score="val_miou",
            settings=self.settings,
            on_best=self._save_best,
            checkpoint=LAST,
            history_csv=True,
        )

    # -- the loop's bookkeeping ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs finished."""
        return self.loop.epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.loop.history

    @property
    def best_miou(self) -> float:
        return self.loop.best

    @property
    def best_epoch(self) -> int:
        return self.loop.best_epoch

    # -- setup helpers ------------------------------------------------------------------------------
    def _embed_texts(self, texts: list[str]) -> dict[str, Any]:
        """Frozen text encoder: each distinct prompt is embedded once for the whole run."""
        import torch

        out: dict[str, Any] = {}
        max_len = int(self.net.config.text_config.max_position_embeddings)
        self.net.eval()
        for i in range(0, len(texts), 64):
            chunk = texts[i : i + 64]
            enc = self.processor.tokenizer(
                chunk, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            with torch.no_grad():
                emb = self.net.get_conditional_embeddings(
                    batch_size=len(chunk),
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                )
            out.update(zip(chunk, emb))
        return out

    def _loader(self, samples: list, train: bool):
        import torch

        ds = _SampleSet(samples, self.processor.image_processor, self.image_size, source_masks=not train)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=train,
            generator=self.shuffle_gen if train else None,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.startswith("cuda"),
        )

    def _decoder_logits(self, pixels, texts: Sequence[str]):
        """B x s x s logits at the decoder's own resolution (the frozen CLIP runs without gradients)."""
        import torch

        cond = torch.stack([self.text_emb[t] for t in texts])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.net(pixel_values=pixels, conditional_embeddings=cond).logits
        return logits.float().reshape(len(texts), *logits.shape[-2:])

    def _to_train_size(self, logits):
        """Logits upsampled (bilinear) to the training size where the decoder's map is smaller."""
        import torch.nn.functional as F

        if tuple(logits.shape[-2:]) == (self.image_size, self.image_size):
            return logits
        return F.interpolate(
            logits[:, None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )[:, 0]

    # -- epochs ---------------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        """One pass over the training set; returns the mean BCE + Dice loss."""
        import torch
        from tqdm.auto import tqdm

        self.net.eval()  # the frozen CLIP stays in eval mode
        self.net.decoder.train()
        total = torch.zeros((), device=self.device)
        n = 0
        bar = tqdm(
            self._loader(self.train_samples, train=True),
            desc=f"seed {self.seed} epoch {self.epoch + 1}/{self.epochs}",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        for batch in bar:
            pixels = batch["pixels"].to(self.device, non_blocking=True)
            target = batch["target"].to(self.device, non_blocking=True)
            texts = [self.prompt_rng.choice(self.options[i]) for i in batch["index"]]
            loss = bce_dice_loss(self._to_train_size(self._decoder_logits(pixels, texts)), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(texts)
            n += len(texts)
        self.scheduler.step()
        self.net.decoder.eval()
        return float(total / max(n, 1))

    def evaluate(self, save_dir: str | os.PathLike | None = None) -> EvalResult:
        """Validation loss, and IoU / Dice per sample at the source resolution (threshold on the probability).

        With ``save_dir`` the predicted masks are written there as ``{id}_{prompt_slug}.png``.

        Args:
            save_dir: where the predicted masks are written, or None.
        """
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        from ..io import mask_filename, save_mask

        self.net.eval()
        cut = math.log(self.threshold / (1.0 - self.threshold))  # sigmoid(x) > t  <=>  x > logit(t)
        losses, ious, dices = [], [], []
        for batch in tqdm(
            self._loader(self.val_samples, train=False),
            desc="validating",
            unit="batch",
            disable=not self.progress,
            leave=False,
        ):
            idx = batch["index"]
            texts = [self.val_samples[i].prompt for i in idx]
            with torch.no_grad():
                pixels = batch["pixels"].to(self.device, non_blocking=True)
                small = self._decoder_logits(pixels, texts)
                target = batch["target"].to(self.device)
                losses.append(bce_dice_loss(self._to_train_size(small), target) * len(idx))
                for j, i in enumerate(idx):
                    gt = batch["mask"][j].to(self.device)
                    up = F.interpolate(
                        small[j][None, None], size=gt.shape, mode="bilinear", align_corners=False
                    )
                    pred = up[0, 0] > cut
                    ious.append(iou(pred, gt))
                    dices.append(dice(pred, gt))
                    if save_dir is not None:
                        save_mask(
                            Path(save_dir) / mask_filename(self.val_samples[i].id, texts[j]),
                            pred.cpu().numpy(),
                        )
        ious_np = torch.stack(ious).cpu().numpy()
        dices_np = torch.stack(dices).cpu().numpy()
        loss = float(torch.stack(losses).sum() / len(self.val_samples))
        records = [
            {"id": s.id, "class": sample_class(s), "prompt": s.prompt, "iou": float(a), "dice": float(b)}
            for s, a, b in zip(self.val_samples, ious_np, dices_np)
        ]
        return EvalResult(loss, float(ious_np.mean()), float(dices_np.mean()), records)

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "seed": self.seed,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "image_size": self.image_size,
            "threshold": self.threshold,
        }

    def _state(self) -> dict[str, Any]:
        """What ``last.pt`` holds besides the loop's bookkeeping: decoder, optimizer, scheduler, RNG
        states."""
        import torch

        from ..segmenters.clipseg import decoder_state

        state = {
            "model": decoder_state(self.net),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle_gen.get_state(),
                "prompt": self.prompt_rng.getstate(),
            },
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        import torch

        self.net.decoder.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        self.prompt_rng.setstate(_tuplify(state["rng"]["prompt"]))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def _save_best(self, epoch: int, rec: dict[str, Any]) -> None:
        from ..segmenters.clipseg import save_decoder

        save_decoder(
            self.net,
            self.out / BEST,
            metadata={
                "base_model": self.model_name,
                "epoch": epoch,
                "val_miou": f"{rec['val_miou']:.6f}",
                "val_dice": f"{rec['val_dice']:.6f}",
                "seed": self.seed,
                "image_size": self.image_size,
                "threshold": self.threshold,
            },
        )

    def save_last(self) -> Path:
        """Write ``last.pt``: decoder, optimizer, scheduler, RNG states, epoch, history and best score."""
        return self.loop.save()

    def load_last(self) -> bool:
        """Restore ``last.pt`` when it exists (False otherwise); its settings must match this run's."""
        return self.loop.resume()

    def fit(
        self,
        resume: bool = False,
        overwrite: bool = False,
        on_epoch_end: Callable[[ClipSegTrainer, dict], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train to ``epochs``; ``resume`` continues ``last.pt``. Returns the history (one dict per epoch).

        Args:
            resume: continue from ``last.pt`` when it exists.
            overwrite: start over although ``last.pt`` exists (otherwise that raises ConfigError).
            on_epoch_end: called with the trainer and each epoch's record once it is saved.
        """
        last = self.out / LAST
        if resume:
            if self.load_last() and self.progress:
                print(f"resuming {last} after epoch {self.epoch}/{self.epochs}")
        elif last.exists() and not overwrite:
            raise ConfigError(
                f"{last} exists: pass --resume (resume=True) to continue that run, or --overwrite "
                "(overwrite=True) to start over"
            )

        def one_epoch(epoch: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_epoch()
            ev = self.evaluate()
            return {
                "train_loss": train_loss,
                "val_loss": ev.loss,
                "val_miou": ev.miou,
                "val_dice": ev.dice,
                "lr": lr,
                "time_s": time.perf_counter() - t0,
            }

        def report(rec: dict[str, Any]) -> None:
            if self.progress:
                print(
                    f"seed {self.seed} epoch {rec['epoch']}/{self.epochs}: "
                    f"train loss {rec['train_loss']:.4f}, "
                    f"val loss {rec['val_loss']:.4f}, val mIoU {rec['val_miou']:.4f}, val Dice "
                    f"{rec['val_dice']:.4f} ({rec['time_s']:.1f} s)"
                )
            if on_epoch_end is not None:
                on_epoch_end(self, rec)

        return self.loop.run(one_epoch, report)

    def finish(self, predictions: bool = True, plot: bool = True) -> dict[str, Any]:
        """Best decoder -> validation predictions, per-class table (Markdown + CSV), per-sample CSV, curves.

        Args:
            predictions: write the best decoder's validation masks under ``predictions/``.
            plot: write ``curves.png``.
        """
        from ..segmenters.clipseg import load_decoder

        load_decoder(self.net, self.out / BEST)
        self.net.to(self.device)
        ev = self.evaluate(save_dir=self.out / "predictions" if predictions else None)
        rows = class_table(ev.records)
        write_table(
            rows,
            self.out / "results",
            title=f"Validation results, seed {self.seed} (best epoch {self.best_epoch})",
        )
        write_csv(self.out / "per_sample.csv", ev.records)
        if plot:
            plot_curves({self.seed: self.history}, self.out / "curves.png", CURVES)
        return {
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "val_miou": ev.miou,
            "val_dice": ev.dice,
            "checkpoint": str(self.out / BEST),
            "table": rows,
        }


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- outputs ------------------------------------------------------------------------------------------


def class_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CLIPSeg drywall report table 3: per class (first-seen order) mean IoU / Dice and count, then
    ``Overall``.

    Args:
        records: per-sample records with ``class``, ``iou`` and ``dice``.
    """
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["class"], []).append(r)
    rows = []
    for name, rs in list(groups.items()) + [("Overall", records)]:
        rows.append(
            {
                "Class": name[:1].upper() + name[1:],
                "mIoU": float(np.mean([r["iou"] for r in rs])),
                "Dice": float(np.mean([r["dice"] for r in rs])),
                "Samples": len(rs),
            }
        )
    return rows


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """The per-class table as markdown (``Overall`` in bold).

    Args:
        rows: the rows of :func:`class_table`.
    """
    lines = ["| Class | mIoU | Dice | Samples |", "|---|---:|---:|---:|"]
    for r in rows:
        name = f"**{r['Class']}**" if r["Class"] == "Overall" else r["Class"]
        lines.append(f"| {name} | {r['mIoU']:.4f} | {r['Dice']:.4f} | {r['Samples']} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], stem: Path, title: str = "") -> None:
    """``{stem}.md`` and ``{stem}.csv``.

    Args:
        rows: the rows of :func:`class_table`.
        stem: the output path without suffix.
        title: a heading for the markdown file (none when empty).
    """
    atomic_write(stem.with_suffix(".md"), (f"# {title}\n\n" if title else "") + table_markdown(rows))
    write_csv(
        stem.with_suffix(".csv"),
        [{**r, "mIoU": f"{r['mIoU']:.4f}", "Dice": f"{r['Dice']:.4f}"} for r in rows],
    )


#: Panels of ``curves.png``: loss (train solid, validation dashed), validation mIoU and Dice per epoch.
CURVES = (
    ("BCE + Dice loss", ("train_loss", "val_loss")),
    ("validation mIoU", ("val_miou",)),
    ("validation Dice", ("val_dice",)),
)


# --- several seeds ------------------------------------------------------------------------------------


def train_clipseg(
    train: Iterable,
    val: Iterable,
    out_dir: str | os.PathLike = "runs/clipseg",
    seeds: Sequence[int] = DRYWALL_RECIPE["seeds"],
    resume: bool = False,
    overwrite: bool = False,
    predictions: bool = True,
    plot: bool = True,
    on_epoch_end: Callable[[ClipSegTrainer, dict], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train one decoder per seed into ``out_dir/seed_{seed}/`` and summarise them.

    ``settings`` are :class:`ClipSegTrainer` arguments (model, epochs, batch_size, lr, weight_decay,
    image_size, prompt_map, augment, threshold, device, num_workers, amp, progress). Writes
    ``summary.md`` / ``summary.csv`` (one row per seed), ``summary.json`` (best seed and its checkpoint),
    ``results.md`` / ``.csv`` (the best seed's per-class table) and ``curves.png`` (all seeds).

    Args:
        train: the training samples.
        val: the validation samples.
        out_dir: the output folder (one ``seed_{seed}/`` per seed).
        seeds: the random seeds, one run each.
        resume: continue runs that hold ``last.pt``.
        overwrite: start runs over although they hold ``last.pt``.
        predictions: write the best decoder's validation masks.
        plot: write the training curves.
        on_epoch_end: called with the trainer and each epoch's record.
        **settings: :class:`ClipSegTrainer` arguments.
    """
    train, val = _as_list(train), _as_list(val)
    out = Path(out_dir)
    if not seeds:
        raise ConfigError("give at least one seed")
    runs, histories = [], {}
    for seed in seeds:
        tr = ClipSegTrainer(train, val, out / f"seed_{seed}", seed=seed, **settings)
        tr.fit(resume=resume, overwrite=overwrite, on_epoch_end=on_epoch_end)
        runs.append(tr.finish(predictions=predictions, plot=plot))
        histories[seed] = tr.history
        del tr
    best = max(runs, key=lambda r: r["val_miou"])
    rows = [
        {
            "Seed": r["seed"],
            "Best epoch": r["best_epoch"],
            "mIoU": f"{r['val_miou']:.4f}",
            "Dice": f"{r['val_dice']:.4f}",
        }
        for r in runs
    ]
    write_csv(out / "summary.csv", rows)
    md = ["| Seed | Best epoch | mIoU | Dice |", "|---:|---:|---:|---:|"]
    md += [f"| {r['Seed']} | {r['Best epoch']} | {r['mIoU']} | {r['Dice']} |" for r in rows]
    atomic_write(
        out / "summary.md",
        "# CLIPSeg decoder fine-tuning: validation per seed\n\n"
        + "\n".join(md)
        + f"\n\nBest seed: **{best['seed']}** ({best['checkpoint']})\n\n"
        + f"## Final evaluation results - best seed ({best['seed']})\n\n"
        + table_markdown(best["table"]),
    )
    write_table(
        best["table"], out / "results", title=f"Final evaluation results - best seed ({best['seed']})"
    )
    summary = {
        "best_seed": best["seed"],
        "checkpoint": best["checkpoint"],
        "val_miou": best["val_miou"],
        "val_dice": best["val_dice"],
        "runs": [{k: v for k, v in r.items() if k != "table"} for r in runs],
    }
    atomic_write_json(out / "summary.json", summary)
    if plot:
        plot_curves(histories, out / "curves.png", CURVES)
    return summary


# --- folders ------------------------------------------------------------------------------------------


def folder_samples(
    directory: str | os.PathLike,
    prompt: str,
    cls: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 42,
) -> tuple[list, list]:
    """(train, val) Samples of a folder: ``train/`` + ``val/`` (or ``valid/``) each with ``images/`` +
    ``masks/``, or one ``images/`` + ``masks/`` split ``1 - val_fraction`` / ``val_fraction`` with ``seed``.

    Args:
        directory: the data folder.
        prompt: the text prompt of every sample.
        cls: the class samples are reported under (None: the drywall class whose phrasings hold ``prompt``,
            else the folder name).
        val_fraction: the validation fraction when the folder has no split.
        seed: the random seed of that split.
    """
    from ..data.folder import ImageMaskFolder

    d = Path(directory)
    if not d.is_dir():
        raise LvlmError(f"{d}: no such directory")
    if cls is None:
        cls = next((k for k, v in DRYWALL_PROMPTS.items() if prompt in v), d.name)

    def load(root: Path) -> list:
        return list(
            ImageMaskFolder(
                str(root), prompt=prompt, mask_suffix=["", "_mask"], tags={"class": cls}, lazy_masks=True
            )
        )

    if (d / "train").is_dir():
        vd = next((d / n for n in ("val", "valid", "validation") if (d / n).is_dir()), None)
        if vd is None:
            raise LvlmError(f"{d}: has train/ but no val/ (or valid/) folder")
        return load(d / "train"), load(vd)
    samples = load(d)
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(val_fraction * len(samples))) if len(samples) > 1 else 0
    val = [samples[i] for i in sorted(order[:n_val])]
    train = [samples[i] for i in sorted(order[n_val:])]
    return train, val


# --- command line -------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """Options of ``lvlm train clipseg`` (defaults: the CLIPSeg drywall report's table 1).

    Args:
        parser: the ``argparse`` (sub)parser.
    """
    d = parser.add_argument_group("data (a registered dataset, or folders of images/ + masks/)")
    d.add_argument("--dataset", help="registered dataset name (see `lvlm list dataset`), e.g. drywall")
    d.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="dataset root directory (repeat for a dataset made of several roots, e.g. drywall)",
    )
    d.add_argument("--train-split", default="train", help="dataset split to train on (default: train)")
    d.add_argument("--val-split", default="valid", help="dataset split to validate on (default: valid)")
    d.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset constructor argument (repeatable; values parsed as YAML)",
    )
    d.add_argument(
        "--val-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor argument for the validation set only (for datasets without splits)",
    )
    d.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DIR",
        help="folder with images/ + masks/ (or train/ + val/ holding them); repeatable",
    )
    d.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="prompt of the --data folder(s): one for all, or one per --data, in order",
    )
    d.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="validation share of a --data folder without train/ + val/ (default: 0.2)",
    )
    d.add_argument("--limit", type=int, help="use at most N training and N validation samples (smoke runs)")
    t = parser.add_argument_group("training")
    t.add_argument(
        "--model",
        default=None,
        help=(
            "base CLIPSeg: Hugging Face id, local directory or tiny-random "
            "(default: CIDAS/clipseg-rd64-refined)"
        ),
    )
    t.add_argument("--out", "-o", default="runs/clipseg", help="output directory (default: runs/clipseg)")
    t.add_argument("--epochs", type=int, default=DRYWALL_RECIPE["epochs"], help="(default: 20)")
    t.add_argument("--batch-size", type=int, default=DRYWALL_RECIPE["batch_size"], help="(default: 16)")
    t.add_argument(
        "--lr", type=float, default=DRYWALL_RECIPE["lr"], help="AdamW learning rate (default: 1e-4)"
    )
    t.add_argument(
        "--weight-decay", type=float, default=DRYWALL_RECIPE["weight_decay"], help="(default: 1e-4)"
    )
    t.add_argument(
        "--image-size",
        type=int,
        default=DRYWALL_RECIPE["image_size"],
        help="square training input side (default: 352)",
    )
    t.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DRYWALL_RECIPE["seeds"]),
        help="one run per seed (default: 42 123 7)",
    )
    t.add_argument(
        "--threshold",
        type=float,
        default=DRYWALL_RECIPE["threshold"],
        help="sigmoid threshold (default: 0.5)",
    )
    t.add_argument(
        "--prompts",
        metavar="FILE",
        help=(
            "YAML/JSON {class: [phrasings]} for prompt augmentation "
            "(default: the CLIPSeg drywall report's lists)"
        ),
    )
    t.add_argument("--no-augment", action="store_true", help="train on each sample's own prompt only")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: auto)")
    t.add_argument("--num-workers", type=int, default=2, help="data loader workers (default: 2)")
    t.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast (default: on for CUDA)",
    )
    t.add_argument("--resume", action="store_true", help="continue each seed's last.pt")
    t.add_argument("--overwrite", action="store_true", help="start over even where last.pt exists")
    t.add_argument("--no-predictions", action="store_true", help="do not write the validation masks")
    t.add_argument("--no-plot", action="store_true", help="do not draw curves.png")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")


def _load_data(args) -> tuple[list, list]:
    if args.dataset and args.data:
        raise ConfigError("give --dataset or --data, not both")
    if args.dataset:
        import inspect

        from ..registry import build, get

        extra = _key_values(args.dataset_arg, "--dataset-arg")
        val_extra = _key_values(args.val_arg, "--val-arg")
        if args.root:
            extra["root"] = args.root[0] if len(args.root) == 1 else list(args.root)
        entry = get("dataset", args.dataset)
        target = entry.obj.__init__ if inspect.isclass(entry.obj) else entry.obj
        train_kw, val_kw = dict(extra), {**extra, **val_extra}
        if "split" in inspect.signature(target).parameters:
            train_kw.setdefault("split", args.train_split)
            val_kw.setdefault("split", args.val_split)
        elif not val_extra:
            raise ConfigError(
                f"dataset {args.dataset!r} has no splits: give --val-arg KEY=VALUE to make the "
                "validation set differ from the training set (e.g. --val-arg start=20000000)"
            )
        train = list(build("dataset", args.dataset, **train_kw))
        val = list(build("dataset", args.dataset, **val_kw))
    elif args.data:
        prompts = args.prompt
        if not prompts:
            raise ConfigError("--data needs --prompt TEXT (one for all folders or one per folder)")
        if len(prompts) == 1:
            prompts = prompts * len(args.data)
        if len(prompts) != len(args.data):
            raise ConfigError(f"{len(args.data)} --data folders but {len(prompts)} --prompt values")
        train, val = [], []
        for d, p in zip(args.data, prompts):
            tr, va = folder_samples(d, p, val_fraction=args.val_fraction)
            train += tr
            val += va
    else:
        raise ConfigError("give the data: --dataset NAME [--root DIR], or --data DIR --prompt TEXT")
    if args.limit:
        train, val = train[: args.limit], val[: args.limit]
    return train, val


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for kv in items:
        if "=" not in kv:
            raise ConfigError(f"{option} {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _load_prompt_map(path: str | None) -> dict | None:
    if path is None:
        return None
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--prompts {path}: no such file")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) and v for v in data.values()):
        raise ConfigError(f"--prompts {path}: expected a mapping class -> list of prompts")
    return {str(k): [str(x) for x in v] for k, v in data.items()}


def run(args) -> int:
    """``lvlm train clipseg``: load the data, train every seed and print the summary; returns the exit status.

    Args:
        args: the parsed options of :func:`add_arguments`.
    """
    train, val = _load_data(args)
    if not args.quiet:
        print(
            f"clipseg: {len(train)} training and {len(val)} validation samples; seeds {args.seeds}; "
            f"output {args.out}"
        )
    train_clipseg(
        train,
        val,
        args.out,
        seeds=args.seeds,
        resume=args.resume,
        overwrite=args.overwrite,
        predictions=not args.no_predictions,
        plot=not args.no_plot,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        image_size=args.image_size,
        prompt_map=_load_prompt_map(args.prompts),
        augment=not args.no_augment,
        threshold=args.threshold,
        device=args.device,
        num_workers=args.num_workers,
        amp=args.amp,
        progress=not args.quiet,
    )
    if not args.quiet:
        print((Path(args.out) / "summary.md").read_text())
    return 0
