"""Bounded, per-model job queues for ``lvlm serve``.

Each served config gets one worker thread and one pipeline, built on the first job for that config
and kept; jobs for one config run one at a time in arrival order, so a model never runs two images at
once. Admission is bounded over all configs together: :meth:`ModelPool.submit` raises
:class:`QueueFull` when ``max_queue`` jobs are queued or running. A job whose future was cancelled
before its turn (its client went away) is skipped without running the model.

Nothing here knows about HTTP; :mod:`lvlm.serve.app` maps the outcomes to status codes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("lvlm.serve")


class QueueFull(Exception):
    """The server holds ``max_queue`` jobs already; the client should retry later."""


@dataclass
class Job:
    """One segmentation request, decoded and checked.

    Args:
        config: name of a served config.
        image: H x W x 3 uint8 RGB array.
        prompt: the text prompt, or None.
        boxes: K x 4 xyxy boxes in input pixels, or None.
        points: P x 2 foreground points (one prompt), or None.
    """

    config: str
    image: np.ndarray
    prompt: str | None = None
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None


class _Slot:
    """A config's pipeline (built on first use) and the thread that runs its jobs."""

    def __init__(self, name: str, factory: Callable[[str], Any]) -> None:
        self.name = name
        self.factory = factory
        self.pipeline: Any = None
        self.build_seconds: float | None = None
        self.building = False
        self.lock = threading.Lock()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None

    def get_pipeline(self) -> Any:
        with self.lock:  # built once, even if two callers ask at the same time
            if self.pipeline is None:
                self.building = True
                t0 = time.perf_counter()
                try:
                    self.pipeline = self.factory(self.name)
                finally:
                    self.building = False
                self.build_seconds = time.perf_counter() - t0
                log.info("built config %s in %.1f s", self.name, self.build_seconds)
            return self.pipeline


class ModelPool:
    """The served pipelines, one worker thread each, behind one bounded admission count.

    Args:
        configs: names of the configs to serve (each built on its first job).
        factory: ``factory(name) -> pipeline``; a pipeline is called as
            ``pipeline(image, prompt, box=..., point=...)`` and returns a :class:`lvlm.types.Result`.
        max_queue: most jobs queued or running at once, over all configs; more raise QueueFull.
    """

    def __init__(self, configs: list[str], factory: Callable[[str], Any], max_queue: int = 16) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.slots = {name: _Slot(name, factory) for name in configs}
        self.max_queue = int(max_queue)
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self.served = 0
        self.skipped = 0

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        return self._pending

    def status(self) -> dict[str, Any]:
        """Queue length and, per config, whether its pipeline is built (for /healthz and the page)."""
        return {
            "pending": self._pending,
            "max_queue": self.max_queue,
            "served": self.served,
            "skipped": self.skipped,
            "configs": {
                n: {
                    "loaded": s.pipeline is not None,
                    "building": s.building,
                    "queued": s.jobs.qsize(),
                    "build_seconds": s.build_seconds,
                }
                for n, s in self.slots.items()
            },
        }

    def submit(self, job: Job) -> Future:
        """Queue ``job`` and return its future (result: ``(Result, info dict)``).

        Args:
            job: the job; ``job.config`` must be one of the served configs.

        Raises:
            QueueFull: ``max_queue`` jobs are queued or running already.
        """
        slot = self.slots[job.config]
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._pending >= self.max_queue:
                raise QueueFull(
                    f"server busy: {self._pending} requests queued or running "
                    f"(limit {self.max_queue}); retry later"
                )
            self._pending += 1
            if slot.thread is None:
                slot.thread = threading.Thread(
                    target=self._work, args=(slot,), name=f"lvlm-serve-{slot.name}", daemon=True
                )
                slot.thread.start()
        # released exactly once: when the job finishes, fails, or is cancelled while still queued
        job.future.add_done_callback(self._release)
        slot.jobs.put(job)
        return job.future

    def _release(self, _future: Future) -> None:
        with self._lock:
            self._pending -= 1

    def _work(self, slot: _Slot) -> None:
        while True:
            job = slot.jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():  # its client went away while queued
                self.skipped += 1
                continue
            job.started_at = time.perf_counter()
            try:
                built = slot.pipeline is not None
                pipe = slot.get_pipeline()
                t_run = time.perf_counter()
                res = pipe(job.image, job.prompt, box=job.boxes, point=job.points)
                info = {
                    "queue": job.started_at - job.queued_at,
                    "build": 0.0 if built else t_run - job.started_at,
                }
                self.served += 1
                job.future.set_result((res, info))
            except BaseException as exc:  # noqa: BLE001 - handed to the request; the worker goes on
                job.future.set_exception(exc)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, cancel the queued ones and stop the worker threads.

        Args:
            timeout: seconds to wait for each worker to finish its running job.
        """
        with self._lock:
            self._closed = True
        for slot in self.slots.values():
            while True:
                try:
                    job = slot.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.future.cancel()
            slot.jobs.put(None)
        for slot in self.slots.values():
            if slot.thread is not None:
                slot.thread.join(timeout)
