"""The epoch loop every lvlm trainer runs on: resume, history, best checkpoint, early stopping, curves.

A trainer supplies what is its own: one epoch (``epoch_fn(epoch) -> record``), its state (model,
optimiser, scheduler, RNG states) as ``state_fn() -> dict`` and ``load_fn(dict)``, and what to do when the
score improves (``on_best(epoch, record)``, e.g. write the best weights). :class:`TrainLoop` does the rest
the same way for all of them:

- after every epoch it appends the record to the history, tracks the best score, counts epochs without
  a gain of more than ``min_delta`` and stops after ``patience`` of them;
- it writes ``last.pt`` (the trainer's state plus the loop's: epoch, history, best, settings) and
  ``history.json`` (``history.csv`` too when asked) through :func:`lvlm.fsutil.atomic_write`, so a run
  killed at any moment resumes from its last finished epoch;
- :meth:`TrainLoop.resume` restores that state (refusing a ``last.pt`` written with other settings), and
  the resumed run ends in the state an uninterrupted one would have reached, as long as the trainer's
  state includes every random generator it draws from;
- :func:`plot_curves` draws the history with matplotlib (imported only then).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fsutil import atomic_write, atomic_write_json

__all__ = ["TrainLoop", "plot_curves", "write_csv"]

Record = dict[str, Any]


class TrainLoop:
    """Epochs ``1..epochs`` of a trainer, with resume, history, best tracking and early stopping.

    Args:
        out_dir: the run folder (``last.pt``, ``history.json`` go there; created).
        epochs: the last epoch to run.
        state_fn: the trainer's state to checkpoint (tensors, numbers, lists, dicts: ``weights_only``
            loadable).
        load_fn: restores what ``state_fn`` returned.
        score: the record key to maximise, or a function of the record (higher is better).
        min_delta: the gain over the best score an epoch needs to count as an improvement.
        patience: stop after this many epochs without an improvement (``None``: never stop early).
        settings: values a resumed run must share with the checkpoint (a mismatch is a ``ConfigError``).
        on_best: called with ``(epoch, record)`` when the score improves (write the best weights here).
        checkpoint: file name of the state checkpoint.
        history_file: file name of the JSON history.
        history_csv: also write the history as CSV (``history.csv``).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        epochs: int,
        state_fn: Callable[[], dict[str, Any]],
        load_fn: Callable[[dict[str, Any]], None],
        score: str | Callable[[Record], float] = "val_iou",
        min_delta: float = 0.0,
        patience: int | None = None,
        settings: Mapping[str, Any] | None = None,
        on_best: Callable[[int, Record], None] | None = None,
        checkpoint: str = "last.pt",
        history_file: str = "history.json",
        history_csv: bool = False,
    ) -> None:
        self.out = Path(out_dir)
        self.epochs = int(epochs)
        self.state_fn, self.load_fn = state_fn, load_fn
        self.score_fn = score if callable(score) else (lambda r, k=score: float(r[k]))
        self.min_delta = float(min_delta)
        self.patience = None if patience is None else int(patience)
        self.settings = dict(settings or {})
        self.on_best = on_best
        self.checkpoint = self.out / checkpoint
        self.history_path = self.out / history_file
        self.history_csv = history_csv
        self.epoch = 0  # epochs finished
        self.history: list[Record] = []
        self.best = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The loop's part of ``last.pt``."""
        return {
            "history": self.history,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "settings": self.settings,
        }

    def save(self) -> Path:
        """Write ``last.pt`` (trainer state, ``epoch`` and the loop's state under ``loop``) atomically."""
        import torch

        state = {**self.state_fn(), "epoch": self.epoch, "loop": self.state()}
        atomic_write(self.checkpoint, lambda f: torch.save(state, f))
        return self.checkpoint

    def resume(self, map_location: Any = "cpu") -> bool:
        """Restore ``last.pt`` when it exists (``False`` otherwise); its settings must match this run's.

        Args:
            map_location: ``torch.load``'s ``map_location`` for the checkpoint.
        """
        import torch

        if not self.checkpoint.is_file():
            return False
        state = torch.load(self.checkpoint, map_location=map_location, weights_only=True)
        loop = state.get("loop") or {}
        saved = loop.get("settings", {})
        diff = {k: (saved.get(k), v) for k, v in self.settings.items() if saved.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(
                f"{self.checkpoint} was written with other settings ({what}); resume with the same "
                "settings or start a new run in another output directory"
            )
        self.load_fn(state)
        self.epoch = int(state["epoch"])
        self.history = list(loop.get("history", []))
        self.best = float(loop.get("best", -math.inf))
        self.best_epoch = int(loop.get("best_epoch", 0))
        self.bad_epochs = int(loop.get("bad_epochs", 0))
        self.stopped_early = self.patience is not None and self.bad_epochs >= self.patience
        return True

    # -- epochs ---------------------------------------------------------------------------------------
    def begin(self, record: Record, candidate: bool = True) -> None:
        """Record the state before training (epoch 0) when the history is empty.

        Args:
            record: the epoch-0 record (e.g. the base model's validation scores).
            candidate: whether it competes for "best" (then ``on_best(0, record)`` is called).
        """
        if self.history:
            return
        record = {"epoch": 0, **record}
        self.history.append(record)
        if candidate:
            self.best, self.best_epoch = self.score_fn(record), 0
            if self.on_best is not None:
                self.on_best(0, record)
        self.write_history()

    def end_epoch(self, record: Record) -> bool:
        """Book one finished epoch: history, best, patience, ``last.pt``, ``history.json``; True on a gain.

        Args:
            record: the epoch's record (its ``epoch`` key, when present, sets the epoch count).
        """
        self.epoch = int(record.get("epoch", self.epoch + 1))
        self.history.append(record)
        score = self.score_fn(record)
        improved = score > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = score, self.epoch, 0
            if self.on_best is not None:
                self.on_best(self.epoch, record)
        else:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            self.stopped_early = True
        self.save()
        self.write_history()
        return improved

    def run(
        self, epoch_fn: Callable[[int], Record], on_epoch_end: Callable[[Record], None] | None = None
    ) -> list[Record]:
        """Run the missing epochs; returns the history.

        Args:
            epoch_fn: trains and validates epoch ``epoch`` (1-based) and returns its record.
            on_epoch_end: called with each record once it is saved (raising there stops the run, resumable).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.epochs and not self.stopped_early:
            record = {"epoch": self.epoch + 1, **epoch_fn(self.epoch + 1)}
            self.end_epoch(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
        return self.history

    def write_history(self) -> None:
        """``history.json`` (and ``history.csv`` when asked)."""
        atomic_write_json(self.history_path, self.history, indent=1, default=str)
        if self.history_csv:
            write_csv(self.history_path.with_suffix(".csv"), self.history)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path | None:
    """Write dict rows as CSV atomically (columns: the union of the keys, first-seen order); None for no rows.

    Args:
        path: the file to write.
        rows: the rows.
    """
    if not rows:
        return None
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return atomic_write(path, buf.getvalue())


def plot_curves(
    histories: Mapping[Any, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    panels: Sequence[tuple[str, Sequence[str]]],
    label: str = "seed",
) -> Path:
    """One figure of training curves: a panel per ``(title, keys)``, a colour per run (matplotlib, lazy).

    In a panel of several keys, the keys starting with ``val_`` are drawn dashed and each line is labelled
    with its key; records without a key (or with ``None`` / NaN) are skipped.

    Args:
        histories: run name (e.g. the seed) -> history (records with an ``epoch`` key).
        path: the image to write.
        panels: ``(title, [record keys])`` per panel.
        label: word put before each run name in the legends.
    """
    from ..optional import require

    require("matplotlib", "training curves")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.4 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for k, (run, hist) in enumerate(histories.items()):
        for ax, (_, keys) in zip(axes, panels):
            for key in keys:
                pts = [(h["epoch"], h[key]) for h in hist if _finite(h.get(key))]
                if not pts:
                    continue
                name = " ".join(x for x in (f"{label} {run}".strip(), key if len(keys) > 1 else "") if x)
                ls = "--" if key.startswith("val_") and len(keys) > 1 else "-"
                ax.plot(*zip(*pts), color=f"C{k}", ls=ls, marker="o", ms=3, label=name)
    for ax, (title, _) in zip(axes, panels):
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
