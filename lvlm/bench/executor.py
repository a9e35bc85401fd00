"""Running every combination of a benchmark on one sample, with shared components and stage caches.

The :class:`Executor` builds each distinct component once (two combinations with the same selector spec
share one object, so its text embeddings are computed once per prompt), wraps generators and prompters
in the disk-backed caches of :mod:`lvlm.bench.cache`, and for one sample runs the combinations that are
not yet done, yielding one result row each. The local runner and each Ray worker use the same class.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, rle
from .. import metrics as M
from ..components import image_key
from ..errors import ConfigError, LvlmError
from ..io import load_image, load_mask
from ..pipeline import STAGES, EmptyMaskWarning, Pipeline
from ..registry import build_spec, check_kwargs, get
from ..types import Prompts, Sample, masks_to_boxes
from .cache import CachedGenerator, CachedPrompter, ImageContext
from .config import BUILTIN_STRATEGIES, Combination, canonical, import_plugins, spec_hash


def _with_device(kind: str, spec: Any, device: str | None) -> Any:
    """``spec`` with ``device`` set when the component takes a ``device`` argument."""
    if device is None or spec is None:
        return spec
    spec = {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else spec
    if not isinstance(spec, dict):
        return spec
    try:
        check_kwargs(get(kind, spec["name"]).obj, {"device": device}, where="")
    except LvlmError:
        return spec
    return {**spec, "device": device}


def resolve_strategy(name: str):
    """A prompt strategy: ``text``, ``sample_box``, a name of :mod:`lvlm.bench.prompt_strategies`
    (``center``, ``edge``, ``grid4``, ``box``), or ``module:function`` taking the ground-truth mask and
    returning :class:`~lvlm.types.Prompts`.

    Args:
        name: the strategy's name, or ``module:function``.
    """
    if name in BUILTIN_STRATEGIES:
        return name
    if ":" in name:
        import importlib

        mod, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"prompt strategy {name!r}: {exc}") from None
    try:
        from . import prompt_strategies as ps
    except ImportError:
        ps = None
    valid = list(BUILTIN_STRATEGIES) + list(getattr(ps, "STRATEGIES", ()))
    if ps is None or name not in getattr(ps, "STRATEGIES", ()):
        raise ConfigError(
            f"unknown prompt strategy {name!r}; valid: {', '.join(valid)}, or 'module:function'"
        )
    return lambda mask: ps.make_prompts(mask, name)


class Indexed:
    """Random access and ``ids()`` for any dataset: loaders derived from :class:`lvlm.data.base.Dataset`
    have both; a plain iterable of Samples is read once into memory.

    Args:
        dataset: a built dataset, or any iterable of :class:`~lvlm.data.base.Sample`.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self._samples: list[Sample] | None = None
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "ids")):
            self._samples = list(dataset)

    def ids(self) -> list[str]:
        return [s.id for s in self._samples] if self._samples is not None else list(self.dataset.ids())

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index] if self._samples is not None else self.dataset[index]

    def __len__(self) -> int:
        return len(self._samples) if self._samples is not None else len(self.dataset)


class Executor:
    """Runs combinations on samples; components, pipelines and datasets are built on first use.

    Args:
        config: the validated benchmark config.
        combos: the combinations to run (:func:`~lvlm.bench.config.expand`).
        cache_dir: where generator candidates and prompts are cached between runs, or None for memory only.
        device: the device of every model stage (``cpu``, ``cuda``...), or None for each spec's own.
        config_dir: the config's folder, against which relative plugin paths (``imports``) are resolved.
        batch_size: samples whose prompter / segmenter work :meth:`prefetch` batches (a prompter's
            ``prompts_many``, a segmenter's ``embed_many``); 1 runs every stage image by image.
    """

    def __init__(
        self,
        config: dict[str, Any],
        combos: list[Combination],
        cache_dir: str | Path | None = None,
        device: str | None = None,
        config_dir: str | Path | None = None,
        batch_size: int = 8,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(
                f"batch_size={batch_size!r}: expected a positive integer (samples per batched call)"
            )
        self.batch_size = batch_size
        self._loaded: dict[tuple[str, int], tuple[Sample, np.ndarray, np.ndarray]] = {}
        self.config = config
        self.combos = combos
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.tolerance = float((config.get("metrics") or {}).get("tolerance", M.DEFAULT_TOLERANCE))
        self.save_masks = bool(config.get("save_masks", True))
        import_plugins(config.get("imports"), Path(config_dir) if config_dir else None)
        from ..components import resolve_device

        # metrics run where the models run (a GPU when there is one): masks move there once per sample
        self.metric_device = resolve_device(device or "auto")
        self.context = ImageContext()
        self._components: dict[tuple[str, str], Any] = {}
        self._pipelines: dict[str, Pipeline] = {}
        self._datasets: dict[str, Any] = {}
        self._strategies: dict[str, Any] = {}
        self.by_dataset: dict[str, list[Combination]] = {}
        for c in combos:
            self.by_dataset.setdefault(c.dataset, []).append(c)
            self.strategy(c.strategy)  # unknown strategies fail now, not as error rows

    # --- building ---------------------------------------------------------------------------------
    def dataset(self, label: str):
        """The dataset of a label, with random access and ``ids()`` (see :class:`Indexed`).

        Args:
            label: the dataset's label in the config's ``datasets``.
        """
        if label not in self._datasets:
            spec = self.config["datasets"][label]
            self._datasets[label] = Indexed(build_spec("dataset", spec))
        return self._datasets[label]

    def component(self, kind: str, spec: Any) -> Any:
        """One object per distinct (kind, spec); generators and prompters come wrapped in their caches.

        Args:
            kind: the component kind (``generator``, ``selector``, ...).
            spec: its config spec (a name or a dict with ``name``).
        """
        key = (kind, canonical(spec))
        if key not in self._components:
            obj = build_spec(kind, _with_device(kind, spec, self.device))
            if kind == "generator":
                d = self.cache_dir / "generator" / spec_hash(spec) if self.cache_dir else None
                obj = CachedGenerator(obj, d, self.context)
            elif kind == "prompter":
                d = self.cache_dir / "prompter" / spec_hash(spec) if self.cache_dir else None
                obj = CachedPrompter(obj, d, self.context)
            self._components[key] = obj
        return self._components[key]

    def pipeline(self, combo: Combination) -> Pipeline:
        """The pipeline of one combination, built once.

        Args:
            combo: the combination.
        """
        if combo.id not in self._pipelines:
            stages = {
                k: (self.component(k, v) if v is not None else None)
                for k, v in combo.stages.items()
                if k in STAGES
            }
            pipe = Pipeline(**stages, combine=combo.stages.get("combine"))
            pipe.config = dict(combo.stages)
            if combo.strategy != "text" and pipe.generator is not None:
                raise ConfigError(
                    f"prompt strategy {combo.strategy!r} needs a prompted segmenter, but combination "
                    f"{combo.labels} is an everything-mode generator pipeline"
                )
            self._pipelines[combo.id] = pipe
        return self._pipelines[combo.id]

    def strategy(self, name: str):
        """The prompt strategy ``name`` resolved once (see :func:`resolve_strategy`).

        Args:
            name: the strategy's name, or ``module:function``.
        """
        if name not in self._strategies:
            self._strategies[name] = resolve_strategy(name)
        return self._strategies[name]

    @property
    def generators(self) -> list[CachedGenerator]:
        return [c for c in self._components.values() if isinstance(c, CachedGenerator)]

    # --- running ----------------------------------------------------------------------------------
    def run_sample(
        self, dataset: str, index: int, skip: set[str] | frozenset = frozenset(), expect_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Rows of every combination of ``dataset`` not in ``skip`` (combination ids) on sample ``index``.

        Args:
            dataset: the dataset's label.
            index: the sample's index in the dataset.
            skip: ids of the combinations already done on this sample.
            expect_id: the sample id the plan saw at ``index``; a different one raises LvlmError.
        """
        combos = [c for c in self.by_dataset.get(dataset, []) if c.id not in skip]
        if not combos:
            return
        loaded = self._loaded.pop((dataset, index), None)
        sample, image, gt = loaded if loaded is not None else self._load(dataset, index, expect_id)
        self.context.set(image)
        gt_t = torch.from_numpy(np.ascontiguousarray(gt)).to(self.metric_device)
        try:
            for combo in combos:
                yield self._run_one(combo, dataset, index, sample, image, gt, gt_t)
        finally:
            self.context.image = None

    def _load(self, dataset: str, index: int, expect_id: str | None) -> tuple[Sample, np.ndarray, np.ndarray]:
        sample = self.dataset(dataset)[index]
        if expect_id is not None and sample.id != expect_id:
            raise LvlmError(
                f"dataset {dataset!r}: sample {index} is {sample.id!r} here but {expect_id!r} in the "
                "driver; the dataset must list its samples in the same order everywhere"
            )
        image = load_image(sample.image)
        gt = (
            load_mask(sample.mask)
            if not isinstance(sample.mask, np.ndarray)
            else np.asarray(sample.mask, bool)
        )
        if gt.shape != image.shape[:2]:
            raise LvlmError(
                f"{dataset} sample {sample.id}: mask {gt.shape} and image {image.shape[:2]} differ in size"
            )
        return sample, image, gt

    def prefetch(self, items: list[tuple[str, int, Any, str | None]]) -> None:
        """Batch the prompter and segmenter work of several samples before :meth:`run_sample` runs them one by
        one: the text prompts of each prompter go through its ``prompts_many`` together (stored in its cache),
        then the images each segmenter will decode go through its ``embed_many`` (one batched encoder pass,
        kept in its embedding cache). The rows are those of the per-sample run; whatever fails here is left
        to :meth:`run_sample`, which reports it in its row as before.

        Args:
            items: ``(dataset, index, skip, expect_id)`` of the samples about to run, as :meth:`run_sample`
                takes them.
        """
        self._loaded.clear()
        if self.batch_size < 2 or not items:
            return
        work = []  # (combo, pipeline, sample, image, gt) of each cell to run
        for dataset, index, skip, expect_id in items:
            try:
                sample, image, gt = self._loaded[(dataset, index)] = self._load(dataset, index, expect_id)
                work.extend(
                    (c, self.pipeline(c), sample, image, gt)
                    for c in self.by_dataset.get(dataset, [])
                    if c.id not in skip
                )
            except (LvlmError, ValueError, OSError):
                continue
        prompters: dict[int, tuple[Any, list, list]] = {}
        for c, pipe, sample, image, _ in work:
            if (
                isinstance(pipe.prompter, CachedPrompter)
                and c.strategy == "text"
                and isinstance(sample.prompt, str)
                and sample.prompt.strip()
            ):
                entry = prompters.setdefault(id(pipe.prompter), (pipe.prompter, [], []))
                entry[1].append(image)
                entry[2].append(sample.prompt)
        for prompter, images, texts in prompters.values():
            try:
                prompter.prefetch(images, texts)
            except (LvlmError, ValueError):
                prompter._batch.clear()
        segmenters: dict[int, tuple[Any, list]] = {}
        for c, pipe, sample, image, gt in work:
            seg = pipe.segmenter
            if (
                seg is None
                or pipe.generator is not None
                or not hasattr(seg, "embed_many")
                or getattr(seg, "text_conditioned", False)
                or getattr(seg, "zoom", None) is not None
            ):
                continue
            if c.strategy == "text":
                batch = getattr(pipe.prompter, "_batch", {})
                got = batch.get((image_key(image), sample.prompt)) if pipe.prompter is not None else None
                if got is None or not got[0].has_geometry:
                    continue  # not segmented, or its prompts come later (disk cache, no batched prompter)
            segmenters.setdefault(id(seg), (seg, []))[1].append(image)
        for seg, images in segmenters.values():
            if len(images) > 1:
                try:
                    seg.embed_many(images)
                except (LvlmError, ValueError):
                    pass

    def _prompt_args(self, combo: Combination, sample: Sample, gt: np.ndarray) -> dict[str, Any]:
        strat = self.strategy(combo.strategy)
        if strat == "text":
            return {}
        if strat == "sample_box":
            box = sample.box if sample.box is not None else (masks_to_boxes(gt[None]) if gt.any() else None)
            if box is None:
                raise LvlmError("the sample has no box and an empty mask: no box prompt can be made")
            return {"box": np.asarray(box, np.float32)}
        if not gt.any():
            raise LvlmError("the ground-truth mask is empty: no prompt can be derived from it")
        p = strat(gt)
        if not isinstance(p, Prompts):
            p = Prompts(**p)
        return {"box": p.boxes, "point": p.points, "point_label": p.point_labels}

    def _run_one(
        self,
        combo: Combination,
        dataset: str,
        index: int,
        sample: Sample,
        image: np.ndarray,
        gt: np.ndarray,
        gt_t: torch.Tensor,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "combo": combo.id,
            "sample": sample.id,
            "dataset": dataset,
            "index": index,
            "labels": combo.labels,
            "prompt": sample.prompt,
            "tags": dict(sample.tags),
        }
        pipe = self.pipeline(combo)
        t0 = time.perf_counter()
        try:
            kwargs = self._prompt_args(combo, sample, gt)
            text = sample.prompt if (combo.strategy == "text" or pipe.needs_text) else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyMaskWarning)
                res = pipe(image, text, **kwargs)
        except (LvlmError, ValueError) as exc:
            row.update({k: None for k in M.METRICS})
            row.update(error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
            return row
        pred_t = torch.from_numpy(np.ascontiguousarray(res.mask)).to(self.metric_device)
        scores = M.segmentation_metrics(pred_t, gt_t, tolerance=self.tolerance)
        keys = list(M.METRICS) + ["pred_area", "gt_area"]
        values = torch.stack([scores[k].double() for k in keys]).cpu().tolist()  # one device sync per row
        row.update({k: (int(v) if k.endswith("_area") else v) for k, v in zip(keys, values)})
        row.update(
            score=res.score,
            n_candidates=len(res.candidates),
            error=None,
            seconds=time.perf_counter() - t0,
            timings={k: round(v, 6) for k, v in res.timings.items()},
        )
        if len(res.candidates):  # candidate recall: the best candidate, and how much of it the selection got
            cands = torch.from_numpy(np.ascontiguousarray(res.candidates.masks)).to(self.metric_device)
            oracle = M.oracle_iou(cands, gt_t)
            eff = M.selection_efficiency(row["iou"], oracle)
            row.update(oracle_iou=oracle, selection_efficiency=eff if np.isfinite(eff) else None)
        if self.save_masks:
            row["mask"] = rle.encode(res.mask)
        return row


def run_info() -> dict[str, Any]:
    """Versions recorded with every run."""
    import platform
    import sys

    import torch

    return {
        "lvlm": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
