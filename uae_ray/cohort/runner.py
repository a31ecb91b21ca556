"""Fan work out as Ray tasks, one per scan, with progress, bounded in-flight work and a manifest.

Workers write their own outputs and per-scan records (atomically) and return the record; the
driver is the single writer of the manifest snapshot and saves it every minute while the job
runs (:func:`~uae_ray.cohort.embed.add_record`) and at the end, so a killed driver leaves a
snapshot at most a minute old, and the next run folds in the newer per-scan records.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)

# Environment variables a worker needs to reach the services (credentials travel as task
# arguments, never in logs or the runtime environment shown by the dashboard).
WORKER_ENV = ("UAE_S3_ENDPOINT", "UAE_S3_ACCESS_KEY", "UAE_S3_SECRET_KEY", "UAE_S3_SECURE", "UAE_CONFIG")


def worker_env() -> dict[str, str]:
    """The service settings of this process, to hand to workers."""
    return {k: os.environ[k] for k in WORKER_ENV if k in os.environ}


def apply_worker_env(env: dict[str, str]) -> None:
    """Sets the service settings inside a worker (idempotent)."""
    os.environ.update(env)


@dataclass
class Progress:
    """Prints a periodic line with counts and rate (to the log), at most every ``every_s``."""

    total: int
    label: str
    every_s: float = 5.0

    def __post_init__(self) -> None:
        self.done = self.failed = 0
        self.t0 = self._last = time.perf_counter()

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            logger.info(
                "%s: %d/%d scans (%d failed), %.2f scans/s, ETA %.0f s",
                self.label, self.done, self.total, self.failed, rate, eta,
            )


def plain_worker_logs(stream=None) -> None:
    """Worker lines forwarded to the driver carry no ANSI colour codes unless the driver writes
    to a terminal (Ray's ``RAY_COLOR_PREFIX``; a value set by the user wins)."""
    stream = sys.stderr if stream is None else stream
    os.environ.setdefault("RAY_COLOR_PREFIX", "1" if getattr(stream, "isatty", lambda: False)() else "0")


def init_ray(address: str | None) -> None:
    """Connects to ``address`` (or ``$RAY_ADDRESS``), else starts a local Ray instance."""
    import ray

    plain_worker_logs()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("http"):
        address = None  # a dashboard URL is for `ray job submit`, not for drivers
    logger.info("connecting to Ray at %s", address or "a new local instance")
    # "local": a new instance, even where a `ray start` cluster (or a stale record of one in
    # /tmp/ray/ray_current_cluster, which makes a bare ray.init() hang) is on this machine
    ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=True)


def _drain(items: Sequence[Any], submit: Callable[[Any], Any], release: Callable[[Any, bool], None],
           on_result: Callable[[dict[str, Any]], None], label: str, max_in_flight: int) -> Progress:
    """The driver loop shared by tasks and actors: keep at most ``max_in_flight`` calls
    running (``submit(item) -> ObjectRef``), hand each finished record to ``on_result``; a call
    that died becomes an error record (``release(ref, died)`` is told, e.g. to replace an actor)."""
    import ray

    progress = Progress(len(items), label)
    pending: dict[Any, Any] = {}
    queue = list(items)
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            item = queue.pop(0)
            pending[submit(item)] = item
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=30.0)
        for ref in ready:
            item = pending.pop(ref)
            died = False
            try:
                record = ray.get(ref)
            except Exception as e:  # the task / actor itself died; the scan is recorded as failed
                died = True
                record = {"scan_id": getattr(item, "scan_id", str(item)), "uri": getattr(item, "uri", ""),
                          "status": "error", "error": f"task failed: {one_line(e)}"}
            release(ref, died)
            progress.update(record.get("status") == "ok")
            if record.get("status") != "ok":
                where, error = record.get("uri") or record.get("scan_id"), str(record.get("error"))
                logger.error("%s", error if error.startswith(str(where)) else f"{where}: {error}")
            on_result(record)
    return progress


def fan_out(
    fn: Callable[..., dict[str, Any]],
    items: Sequence[Any],
    args: tuple,
    on_result: Callable[[dict[str, Any]], None],
    label: str,
    num_cpus: float = 1.0,
    max_in_flight: int = 256,
) -> Progress:
    """Runs ``fn(item, *args)`` as one Ray task per item; calls ``on_result`` with each record.

    ``fn`` must catch its own per-scan errors and return a record with ``status``; a task that
    dies (worker crash, out of memory) becomes an error record here, and the others go on.
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=1)(fn)
    shared = [ray.put(a) for a in args]
    return _drain(items, lambda item: remote.remote(item, *shared), lambda ref, died: None, on_result, label,
                  max_in_flight)


def fan_out_actors(
    worker: type,
    worker_args: tuple,
    items: Sequence[Any],
    on_result: Callable[[dict[str, Any]], None],
    label: str,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    n_actors: int | None = None,
) -> Progress:
    """Runs ``worker(*worker_args).run(item)`` on a pool of Ray actors: each actor loads its
    models once (in ``__init__``) and serves many items, one at a time. ``run`` must catch its
    own per-scan errors and return a record; an actor that dies is replaced and its item
    recorded as failed.

    Args:
        num_cpus, num_gpus: Resources each actor holds (``num_gpus`` > 0 where the models run
            in-process on a GPU).
        n_actors: Pool size; default: as many as the cluster's free CPUs allow (at most one per item).
    """
    import ray

    actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(worker)
    if n_actors is None:
        n_actors = max(1, int(ray.available_resources().get("CPU", 1.0) // max(num_cpus, 1e-9)))
    n_actors = max(1, min(n_actors, len(items)))
    shared = [ray.put(a) for a in worker_args]
    free = [actor_cls.remote(*shared) for _ in range(n_actors)]
    owner: dict[Any, Any] = {}

    def submit(item: Any) -> Any:
        actor = free.pop()
        ref = actor.run.remote(item)
        owner[ref] = actor
        return ref

    def release(ref: Any, died: bool) -> None:
        actor = owner.pop(ref)
        if died:
            ray.kill(actor, no_restart=True)
            actor = actor_cls.remote(*shared)
        free.append(actor)

    try:
        return _drain(items, submit, release, on_result, label, n_actors)
    finally:
        for actor in free + list(owner.values()):
            ray.kill(actor, no_restart=True)
