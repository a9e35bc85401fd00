"""Benchmark configs: datasets x pipelines (listed, or a product of stage options) x sweeps x prompt
strategies.

A config (YAML or dict)::

    description: Villarreal et al. Tables IV-V (base pipeline)
    imports: [my_components]           # optional: modules / .py files that @register extra components
    datasets:                          # label -> dataset spec
      COCO: {name: coco, root: data/coco, selection: data/coco/selection.csv}
      CXR: {name: cxr, root: data/chest-xray-masks-and-labels, n: 100, seed: 0}
    matrix:                            # the product of every stage's options (label -> spec)
      selector: {OA-RN50: {name: clip, model: OA-RN50}, OA-RN101: {name: clip, model: OA-RN101}}
      generator: {SAM: {name: sam, model_type: vit_h}, SAM 2: {name: sam2, model: hiera_l}}
    pipelines:                         # and/or pipelines listed one by one
      - {label: embedded, config: embedded}
      - {label: MedSAM box, segmenter: {name: medsam}, axes: {segmenter: MedSAM}}
    sweep:                             # any component parameter as another axis
      generator.points_per_side: [16, 32]
    strategies: {Text: text}           # how a sample is prompted (default: its text prompt)
    metrics: {tolerance: 2}            # boundary tolerance in pixels
    save_masks: true                   # keep each predicted mask (RLE) in results.jsonl, for galleries

Each (dataset, pipeline, sweep point, strategy) is one *combination* with a stable id; its rows in
``results.jsonl`` carry the combination's axis labels (``selector``, ``generator``, sweep keys, ``strategy``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..pipeline import STAGES, load_config

TOP_KEYS = (
    "description",
    "imports",
    "datasets",
    "matrix",
    "pipelines",
    "sweep",
    "strategies",
    "metrics",
    "save_masks",
)
MATRIX_KEYS = STAGES + ("combine",)
BUILTIN_STRATEGIES = ("text", "sample_box")
#: keys left out of a combination's id: they change where it runs, not what it computes
RUNTIME_KEYS = ("device", "progress", "verbose")


@dataclass
class Combination:
    """One cell of the matrix: a dataset, a pipeline config, a prompt strategy, and their labels."""

    id: str
    dataset: str  # dataset label
    stages: dict[str, Any]  # pipeline config (stage -> spec, plus combine)
    strategy: str
    labels: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "stages": self.stages,
            "strategy": self.strategy,
            "labels": self.labels,
        }


def canonical(obj: Any) -> str:
    """Key-sorted JSON of a spec, without runtime-only keys (the basis of every cache key).

    Args:
        obj: a spec (dict, list, scalar); keys that only affect where or how it runs are dropped.
    """
    return json.dumps(_strip(obj), sort_keys=True, separators=(",", ":"), default=str)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in RUNTIME_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    return obj


def spec_hash(obj: Any, n: int = 12) -> str:
    """A short hex digest of :func:`canonical` ``(obj)``: the cache key of a spec.

    Args:
        obj: the spec to hash.
        n: the number of hex digits kept.
    """
    return hashlib.blake2b(canonical(obj).encode(), digest_size=16).hexdigest()[:n]


def load_bench_config(config: str | os.PathLike | dict) -> dict[str, Any]:
    """A validated benchmark config dict from a YAML path, packaged name or dict.

    Args:
        config: a YAML path, a packaged config name (``bench/tiny``) or a config dict.
    """
    cfg = load_config(config) if not isinstance(config, dict) else dict(config)
    bad = [k for k in cfg if k not in TOP_KEYS]
    if bad:
        raise ConfigError(
            f"unknown benchmark config key(s) {', '.join(map(repr, bad))}; valid keys: {', '.join(TOP_KEYS)}"
        )
    if not cfg.get("datasets"):
        raise ConfigError("a benchmark config needs 'datasets': {label: {name: <dataset>, root: ...}}")
    if not isinstance(cfg["datasets"], dict):
        raise ConfigError(
            "'datasets' must map a label to a dataset spec, e.g. {COCO: {name: coco, root: ...}}"
        )
    if not cfg.get("matrix") and not cfg.get("pipelines"):
        raise ConfigError(
            "a benchmark config needs 'matrix' (a product of stage options) and/or 'pipelines' (a list)"
        )
    return cfg


def apply_overrides(cfg: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` overrides (VALUE read as YAML) on nested keys, e.g. ``datasets.COCO.root=/data/coco``;
    under ``sweep`` the rest of the key is one name (``sweep.generator.points_per_side=[16,32]``).

    Args:
        cfg: the config dict (not changed; a modified deep copy is returned).
        sets: ``KEY=VALUE`` strings, or None.
    """
    import copy

    import yaml

    cfg = copy.deepcopy(cfg)
    for item in sets or []:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. datasets.COCO.root=/data/coco")
        parts = key.split(".")
        if parts[0] == "sweep" and len(parts) > 2:
            parts = ["sweep", ".".join(parts[1:])]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
        cur = cfg
        for p in parts[:-1]:
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a mapping in the config")
            cur = nxt
        cur[parts[-1]] = value
    return cfg


def import_plugins(imports: list[str] | None, base: Path | None = None) -> None:
    """Import modules (dotted names) or ``.py`` files that register extra components.

    Args:
        imports: dotted module names or ``.py`` paths, or None.
        base: the folder that relative ``.py`` paths are resolved against (the config's folder).
    """
    for item in imports or []:
        if str(item).endswith(".py"):
            path = Path(item)
            if not path.is_absolute() and base is not None:
                path = base / path
            name = f"lvlm_plugin_{path.stem}_{spec_hash(str(path.resolve()), 8)}"
            if name in sys.modules:
                continue
            if not path.is_file():
                raise ConfigError(f"imports: no such file {str(path)!r}")
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            try:
                importlib.import_module(item)
            except ImportError as exc:
                raise ConfigError(f"imports: cannot import {item!r}: {exc}") from None


def _options(stage: str, value: Any) -> list[tuple[str, Any]]:
    """(label, spec) options of one matrix axis: a label -> spec mapping, or a list of specs / names."""
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, str):
                out.append((v, v))
            elif isinstance(v, dict):
                label = v.get("label") or v.get("name", "?")
                out.append((str(label), {k: x for k, x in v.items() if k != "label"}))
            else:
                raise ConfigError(f"matrix.{stage}: options must be names or {{name: ..}} specs, got {v!r}")
        return out
    raise ConfigError(
        f"matrix.{stage}: expected a mapping label -> spec or a list, got {type(value).__name__}"
    )


def _pipelines(cfg: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(stage config, axis labels) of every pipeline: the matrix product, then the listed ones."""
    out = []
    matrix = cfg.get("matrix") or {}
    bad = [k for k in matrix if k not in MATRIX_KEYS]
    if bad:
        raise ConfigError(
            f"matrix: unknown stage(s) {', '.join(map(repr, bad))}; valid: {', '.join(MATRIX_KEYS)}"
        )
    if matrix:
        axes = list(matrix)
        for combo in itertools.product(*(_options(a, matrix[a]) for a in axes)):
            stages = {a: spec for a, (_, spec) in zip(axes, combo)}
            labels = {a: label for a, (label, _) in zip(axes, combo)}
            out.append((stages, labels))
    for i, p in enumerate(cfg.get("pipelines") or []):
        if not isinstance(p, dict):
            raise ConfigError(f"pipelines[{i}]: expected a mapping, got {p!r}")
        p = dict(p)
        label = p.pop("label", None)
        axes = p.pop("axes", None)
        if "config" in p:
            base = load_config(p.pop("config"))
            base.pop("description", None)
            base.update(p)
            p = base
        bad = [k for k in p if k not in MATRIX_KEYS]
        if bad:
            raise ConfigError(
                f"pipelines[{i}]: unknown key(s) {', '.join(map(repr, bad))}; valid: label, axes, config, "
                f"{', '.join(MATRIX_KEYS)}"
            )
        if label is None:
            label = " + ".join(str(v if isinstance(v, str) else v.get("name", "?")) for v in p.values())
        out.append((p, dict(axes) if axes else {"pipeline": str(label)}))
    return out


def _check_sweep(sweep: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
    for key, values in (sweep or {}).items():
        stage, _, param = key.partition(".")
        if stage not in STAGES or not param:
            raise ConfigError(
                f"sweep key {key!r}: expected '<stage>.<parameter>' with stage one of {', '.join(STAGES)}"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep {key!r}: expected a non-empty list of values")
    return dict(sweep or {})


def _sweep_points(sweep: dict[str, list[Any]], stages: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's points over the keys whose stage this pipeline has (one empty point when none)."""
    keys = [k for k in sweep if stages.get(k.partition(".")[0]) is not None]
    return [dict(zip(keys, vals)) for vals in itertools.product(*(sweep[k] for k in keys))]


def _apply_sweep(stages: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The stage config with the sweep point's values set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stages.items()}
    for key, val in point.items():
        stage, _, param = key.partition(".")
        spec = out[stage]
        out[stage] = {"name": spec, param: val} if isinstance(spec, str) else {**spec, param: val}
    return out


def expand(cfg: dict[str, Any]) -> list[Combination]:
    """Every combination of a config, in a stable order (dataset, pipeline, sweep point, strategy).

    Args:
        cfg: a validated benchmark config (:func:`load_bench_config`).
    """
    strategies = cfg.get("strategies") or {"text": "text"}
    if isinstance(strategies, list):
        strategies = {str(s): s for s in strategies}
    pipelines = _pipelines(cfg)
    sweep = _check_sweep(cfg.get("sweep"))
    for key in sweep:
        if not any(st.get(key.partition(".")[0]) is not None for st, _ in pipelines):
            raise ConfigError(f"sweep over {key!r}, but no pipeline has a {key.partition('.')[0]!r} stage")
    out, seen = [], set()
    for ds_label, ds_spec in cfg["datasets"].items():
        for stages, labels in pipelines:
            for point in _sweep_points(sweep, stages):
                st = _apply_sweep(stages, point)
                for s_label, strategy in strategies.items():
                    lab = {**labels, **point}
                    if len(strategies) > 1 or s_label != "text":
                        lab["strategy"] = str(s_label)
                    ident = spec_hash(
                        {
                            "dataset": ds_spec,
                            "label": ds_label,
                            "stages": st,
                            "strategy": strategy,
                            "labels": lab,
                        }
                    )
                    if ident in seen:
                        continue
                    seen.add(ident)
                    out.append(Combination(ident, ds_label, st, str(strategy), lab))
    return out
