"""``lvlm bench CONFIG``: run a benchmark matrix, cached and resumable, locally or sharded on Ray.

A run directory holds::

    run.json        the config, lvlm / torch versions, and one entry per (re)start
    combos.json     every combination: id, dataset, pipeline config, prompt strategy, axis labels
    results.jsonl   one row per (combination, sample), committed as it completes
    cache/          generator candidates (RLE masks) and prompter prompts per (config, image)

Run the same command again after an interruption and it continues where it stopped; extend the config
(another CLIP, another sweep value) and only the new cells are computed, reusing cached generator passes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LvlmError

DEFAULT_RUNS = "runs"


def add_arguments(parser) -> None:
    """Add the options of ``lvlm bench`` to ``parser``.

    Args:
        parser: the ``argparse`` (sub)parser.
    """
    parser.add_argument(
        "config", help="benchmark config: a YAML file or a packaged name (e.g. bench/base_matrix)"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config value (YAML), e.g. datasets.COCO.root=/data/coco (repeatable)",
    )
    parser.add_argument("--out", "-o", help=f"run directory (default: {DEFAULT_RUNS}/<config name>)")
    parser.add_argument("--cache", help="cache directory shared between runs (default: RUN_DIR/cache)")
    parser.add_argument(
        "--device", help="device of every model stage: cpu, cuda, cuda:1 (default: each config's)"
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: shard samples across Ray workers (pip install 'lvlm[ray]')",
    )
    parser.add_argument(
        "--workers", type=int, help="Ray workers (default: the CPUs Ray sees / --cpus-per-worker)"
    )
    parser.add_argument(
        "--ray-address", help="address of an existing Ray cluster ('auto'); default: start a local one"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--limit", type=int, help="only the first N samples of each dataset (a quick check)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="samples per batched prompter / segmenter call (prompts_many, embed_many); 1: one by one",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args) -> int:
    """``lvlm bench``: run the benchmark and print what it wrote; returns the exit status.

    Args:
        args: the parsed options of :func:`add_arguments`.
    """
    out = run_benchmark(
        args.config,
        args.out,
        overrides=args.overrides,
        cache_dir=args.cache,
        device=args.device,
        backend=args.backend,
        workers=args.workers,
        ray_address=args.ray_address,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        limit=args.limit,
        progress=not args.quiet,
        batch_size=args.batch_size,
    )
    print(
        f"{out['run_dir']}: {out['written']} new rows "
        f"({out['total']} in all, {out['errors']} with errors) in "
        f"{out['seconds']:.1f} s; generator passes {out['generator_passes']}, "
        f"cache hits {out['cache_hits']}"
    )
    print(f"tables and plots: lvlm report {out['run_dir']}")
    return 0


def _config_name(config: Any) -> str:
    if isinstance(config, (str, os.PathLike)):
        return Path(config).stem
    return "bench"


def prepare(
    config: Any, run_dir: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> tuple[dict, list, Path, Path | None]:
    """(config dict, combinations, run dir, config's folder) of a config and its ``KEY=VALUE`` overrides.

    Args:
        config: a YAML path, a packaged config name or a config dict.
        run_dir: the run directory (created), or None for ``runs/<config name>``.
        overrides: ``KEY=VALUE`` overrides (see :func:`~lvlm.bench.config.apply_overrides`).
    """
    from .config import apply_overrides, expand, load_bench_config

    cfg = load_bench_config(apply_overrides(load_bench_config(config), overrides))
    config_dir = None
    if isinstance(config, (str, os.PathLike)):
        from ..pipeline import find_config

        config_dir = find_config(config).resolve().parent
    combos = expand(cfg)
    if not combos:
        raise ConfigError("the benchmark config expands to no combination")
    run_dir = Path(run_dir) if run_dir is not None else Path(DEFAULT_RUNS) / _config_name(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, combos, run_dir, config_dir


def _record(run_dir: Path, cfg: dict, combos: list, config_dir: Path | None, session: dict[str, Any]) -> None:
    from ..fsutil import atomic_write_json
    from .executor import run_info

    info_path = run_dir / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.update(config=cfg, config_dir=str(config_dir) if config_dir else None, lvlm=run_info()["lvlm"])
    info.setdefault("sessions", []).append({**run_info(), **session})
    atomic_write_json(info_path, info, indent=None)
    known = {}
    combos_path = run_dir / "combos.json"
    if combos_path.is_file():
        known = {c["id"]: c for c in json.loads(combos_path.read_text())}
    for c in combos:
        known[c.id] = c.as_dict()
    atomic_write_json(combos_path, list(known.values()), indent=None)


def plan(
    executor, combos: list, done: set[tuple[str, str]], limit: int | None = None
) -> list[tuple[str, int, str, frozenset]]:
    """The work left: (dataset, sample index, sample id, combination ids already done) per sample.

    Args:
        executor: the executor (its datasets and combinations per dataset).
        combos: the combinations of the run.
        done: the committed ``(combination id, sample id)`` keys.
        limit: only the first ``limit`` samples of each dataset, or None for all.
    """
    todo = []
    for ds_label, ds_combos in executor.by_dataset.items():
        ds = executor.dataset(ds_label)
        ids = ds.ids()
        if len(set(ids)) != len(ids):
            raise LvlmError(f"dataset {ds_label!r} has repeated sample ids; results could not be told apart")
        for i, sid in enumerate(ids[:limit] if limit is not None else ids):
            skip = frozenset(c.id for c in ds_combos if (c.id, sid) in done)
            if len(skip) < len(ds_combos):
                todo.append((ds_label, i, sid, skip))
    return todo


def run_benchmark(
    config: Any,
    run_dir: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    limit: int | None = None,
    progress: bool = True,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run (or resume) a benchmark; returns counts: rows ``written`` now, ``total``, generator passes, ...

    Args:
        config: a YAML path, a packaged config name or a config dict.
        run_dir: the run directory, or None for ``runs/<config name>``; rows already in it are not run again.
        overrides: ``KEY=VALUE`` config overrides.
        cache_dir: the cache directory, shareable between runs (default: ``RUN_DIR/cache``).
        device: the device of every model stage, or None for each config's own.
        backend: ``local`` (this process) or ``ray`` (samples sharded over Ray workers).
        workers: the number of Ray workers (default: the CPUs Ray sees / ``cpus_per_worker``).
        ray_address: an existing Ray cluster to join, or None to start a local one.
        cpus_per_worker: CPUs reserved per Ray worker.
        gpus_per_worker: GPUs (or fractions) reserved per Ray worker.
        limit: only the first ``limit`` samples of each dataset, or None for all.
        progress: show a progress bar.
        batch_size: samples whose prompter and segmenter work is batched (:meth:`Executor.prefetch`: the
            prompter's ``prompts_many``, the segmenter's ``embed_many``), local backend; 1: one by one.
    """
    from .executor import Executor
    from .results import RESULTS, ResultsLog

    t0 = time.perf_counter()
    cfg, combos, run_dir, config_dir = prepare(config, run_dir, overrides)
    cache = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    executor = Executor(cfg, combos, cache, device=device, config_dir=config_dir, batch_size=batch_size)
    _record(run_dir, cfg, combos, config_dir, {"backend": backend, "device": device, "limit": limit})
    log = ResultsLog(run_dir / RESULTS)
    stats = {"written": 0, "errors": 0, "generator_passes": 0, "cache_hits": 0}
    try:
        todo = plan(executor, combos, log.done, limit)
        n_cells = sum(len(executor.by_dataset[d]) - len(skip) for d, _, _, skip in todo)
        from tqdm.auto import tqdm

        bar = tqdm(total=n_cells, desc="bench", unit="cell", disable=not progress, smoothing=0.1)

        def commit(row):
            if log.append(row):
                stats["written"] += 1
                stats["errors"] += row.get("error") is not None
            bar.update(1)

        if backend == "local":
            for s in range(0, len(todo), executor.batch_size):
                chunk = todo[s : s + executor.batch_size]
                executor.prefetch([(ds_label, index, skip, sid) for ds_label, index, sid, skip in chunk])
                for ds_label, index, sid, skip in chunk:
                    for row in executor.run_sample(ds_label, index, skip, expect_id=sid):
                        commit(row)
            stats["generator_passes"] = sum(g.passes for g in executor.generators)
            stats["cache_hits"] = sum(g.disk_hits for g in executor.generators)
        elif backend == "ray":
            passes, hits = _run_ray(
                cfg,
                combos,
                cache,
                device,
                config_dir,
                todo,
                commit,
                workers,
                ray_address,
                cpus_per_worker,
                gpus_per_worker,
            )
            stats["generator_passes"], stats["cache_hits"] = passes, hits
        else:
            raise ConfigError(f"backend={backend!r}; valid: local, ray")
        bar.close()
    finally:
        log.close()
    from .results import read_rows

    rows = read_rows(run_dir / RESULTS)
    keys = {c.id for c in combos}
    total = sum(1 for r in rows if r["combo"] in keys)
    return {"run_dir": str(run_dir), "total": total, "seconds": time.perf_counter() - t0, **stats}


# --- Ray --------------------------------------------------------------------------------------------


class _Worker:
    """A Ray actor holding one Executor (models stay loaded between shards)."""

    def __init__(self, cfg, combos, cache, device, config_dir, cwd):
        import torch

        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative dataset roots mean the same as in the driver
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        from .executor import Executor

        self.executor = Executor(cfg, combos, cache, device=device, config_dir=config_dir)

    def run(self, dataset: str, index: int, sample_id: str, skip) -> list[dict[str, Any]]:
        return list(self.executor.run_sample(dataset, index, set(skip), expect_id=sample_id))

    def stats(self) -> tuple[int, int]:
        gens = self.executor.generators
        return sum(g.passes for g in gens), sum(g.disk_hits for g in gens)


def _run_ray(
    cfg, combos, cache, device, config_dir, todo, commit, workers, address, cpus, gpus
) -> tuple[int, int]:
    if not todo:
        return 0, 0
    from ..optional import require

    ray = require("ray", "lvlm bench --backend ray")
    from ray.util import ActorPool

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "ignore_reinit_error": True,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=max(1, round((workers or os.cpu_count() or 1) * cpus)), **kwargs)
        started = True
    try:
        n = workers or max(1, int(ray.available_resources().get("CPU", 1) // max(cpus, 1e-9)))
        n = max(1, min(n, len(todo)))
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus)(_Worker)
        actors = [
            actor.remote(
                cfg,
                combos,
                str(Path(cache).resolve()),
                device,
                str(config_dir) if config_dir else None,
                os.getcwd(),
            )
            for _ in range(n)
        ]
        pool = ActorPool(actors)
        # ordered map: rows are committed in the local run's order, each sample as soon as it and its
        # predecessors are done
        for rows in pool.map(lambda a, t: a.run.remote(t[0], t[1], t[2], list(t[3])), todo):
            for row in rows:
                commit(row)
        stats = ray.get([a.stats.remote() for a in actors])
        for a in actors:
            ray.kill(a)
        return sum(s[0] for s in stats), sum(s[1] for s in stats)
    finally:
        if started:
            ray.shutdown()
