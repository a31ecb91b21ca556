"""Fan work out as Ray tasks, one per scan, with progress, bounded in-flight work and a manifest.

Workers write their own outputs and per-scan records (atomically) and return the record; the
driver is the single writer of the manifest snapshot and saves it every minute while the job
runs (:func:`~uae_ray.cohort.embed.add_record`) and at the end, so a killed driver leaves a
snapshot at most a minute old, and the next run folds in the newer per-scan records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

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


@dataclass
class StageClock:
    """Wall seconds per named stage of one scan: ``with clock("read"): ...``."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def unreachable(exc: BaseException) -> str | None:
    """``"S3 endpoint H:P unreachable"`` / ``"Triton at H:P unreachable"`` when ``exc`` says a
    service could not be reached after its client's retries; None for any other error."""
    from uae_ray.storage import S3UnreachableError

    from uae_ray.serving.triton import TritonUnavailableError  # cheap: the client loads on first use

    if isinstance(exc, S3UnreachableError):
        return f"S3 endpoint {exc.endpoint} unreachable"
    if isinstance(exc, TritonUnavailableError):
        return f"Triton at {getattr(exc, 'url', '?')} unreachable"
    return None


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


class ServiceUnreachableError(RuntimeError):
    """A job stopped because a service (S3, Triton) stayed unreachable for several scans in a
    row after each scan's bounded retries; what was finished is kept (one line)."""


#: A died call (worker killed, node lost) is run again up to this many times in all.
MAX_ATTEMPTS = 2
#: The job stops after this many scans in a row failed on an unreachable service.
ABORT_AFTER_UNREACHABLE = 3


@dataclass
class DrainStats:
    """What the driver loop counted besides the progress: calls run again after their worker
    died (``resubmitted``), the pool size (``workers``), and the per-scan extras the workers
    returned, summed (``retries``: service retries; ``stage_seconds``: seconds per stage;
    ``per_node``: items finished per Ray node id)."""

    workers: int = 0
    resubmitted: int = 0
    retries: int = 0
    stage_seconds: dict[str, float] | None = None
    per_node: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict[str, Any]) -> None:
        self.retries += int(result.get("retries") or 0)
        if result.get("node"):
            self.per_node[result["node"]] = self.per_node.get(result["node"], 0) + 1
        for name, seconds in (result.get("stages") or {}).items():
            self.stage_seconds = self.stage_seconds or {}
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + float(seconds)


def _failed(item: Any, error: str) -> dict[str, Any]:
    """The error record of an item whose call itself failed."""
    return {"scan_id": getattr(item, "scan_id", str(item)), "uri": getattr(item, "uri", ""), "status": "error",
            "error": error}


def _drain(items: Sequence[Any], submit: Callable[[Any], Any], release: Callable[[Any, bool], None],
           on_result: Callable[[dict[str, Any]], None], label: str, max_in_flight: int | Callable[[], int],
           stats: DrainStats | None = None) -> Progress:
    """The driver loop shared by tasks and actors: keep at most ``max_in_flight`` calls
    running (``submit(item) -> ObjectRef``; a callable limit is asked each time, for a pool
    that shrinks), hand each finished record to ``on_result``.

    A call that died (its worker process killed, its node lost) is submitted again, up to
    :data:`MAX_ATTEMPTS` in all, then becomes an error record (``release(ref, died)`` is told,
    e.g. to replace an actor). Workers write their outputs atomically, so a call run twice
    leaves one copy. A record with ``unreachable`` set (a service down after its retries) counts
    towards :data:`ABORT_AFTER_UNREACHABLE`; that many in a row stop the job.

    Raises:
        ServiceUnreachableError: A service stayed unreachable (one line; finished work is kept).
    """
    import ray

    stats = stats if stats is not None else DrainStats()
    progress = Progress(len(items), label)
    pending: dict[Any, Any] = {}
    attempts: dict[int, int] = {}
    queue = list(items)
    unreachable_in_a_row = 0
    limit = max_in_flight if callable(max_in_flight) else lambda: max_in_flight
    while queue or pending:
        while queue and len(pending) < limit():
            item = queue.pop(0)
            pending[submit(item)] = item
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=30.0)
        for ref in ready:
            item = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the code raised (it should not): no rerun
                release(ref, False)
                record = _failed(item, f"task failed: {one_line(e)}")
            except Exception as e:  # the worker process or its node died
                release(ref, True)
                attempts[id(item)] = attempts.get(id(item), 1) + 1
                if attempts[id(item)] <= MAX_ATTEMPTS:
                    stats.resubmitted += 1
                    logger.warning("%s: %s: worker lost (%s); running it again", label,
                                   getattr(item, "uri", item), one_line(e))
                    queue.insert(0, item)
                    continue
                record = _failed(item, f"worker lost {MAX_ATTEMPTS} times: {one_line(e)}")
            else:
                release(ref, False)
            stats.add(record)
            progress.update(record.get("status") == "ok")
            if record.get("status") != "ok":
                where, error = record.get("uri") or record.get("scan_id"), str(record.get("error"))
                logger.error("%s", error if error.startswith(str(where)) else f"{where}: {error}")
            on_result(record)
            unreachable_in_a_row = unreachable_in_a_row + 1 if record.get("unreachable") else 0
            if unreachable_in_a_row >= ABORT_AFTER_UNREACHABLE and (queue or pending):
                left = len(queue) + len(pending)
                raise ServiceUnreachableError(
                    f"{label} stopped: {record['unreachable']} ({unreachable_in_a_row} scans in a row failed "
                    f"after retries); {progress.done - progress.failed} scans finished and kept, {left} left "
                    f"undone; re-run the same command to finish them and the failed ones"
                )
    return progress


def fan_out(
    fn: Callable[..., dict[str, Any]],
    items: Sequence[Any],
    args: tuple,
    on_result: Callable[[dict[str, Any]], None],
    label: str,
    num_cpus: float = 1.0,
    max_in_flight: int = 256,
    stats: DrainStats | None = None,
) -> Progress:
    """Runs ``fn(item, *args)`` as one Ray task per item; calls ``on_result`` with each record.

    ``fn`` must catch its own per-scan errors and return a record with ``status``; a task that
    dies (worker crash, node lost) is run again once (see :func:`_drain`), and the others go on.
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)  # _drain runs died tasks again
    shared = [ray.put(a) for a in args]
    return _drain(items, lambda item: remote.remote(item, *shared), lambda ref, died: None, on_result, label,
                  max_in_flight, stats)


def _room_for(num_cpus: float, num_gpus: float, wait_s: float = 5.0) -> bool:
    """Whether the cluster has the free resources of one more actor (waits up to ``wait_s``
    for resources of a killed actor to be given back)."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        if free.get("CPU", 0.0) >= num_cpus and free.get("GPU", 0.0) >= num_gpus:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def fan_out_actors(
    worker: type,
    worker_args: tuple,
    items: Sequence[Any],
    on_result: Callable[[dict[str, Any]], None],
    label: str,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    n_actors: int | None = None,
    stats: DrainStats | None = None,
) -> Progress:
    """Runs ``worker(*worker_args).run(item)`` on a pool of Ray actors spread over the nodes:
    each actor loads its models once (in ``__init__``) and serves many items, one at a time.
    ``run`` must catch its own per-scan errors and return a record. An actor that dies (its
    process killed, its node lost) is replaced where the cluster has room, else the pool
    shrinks; its item is run again (see :func:`_drain`).

    Args:
        num_cpus, num_gpus: Resources each actor holds (``num_gpus`` > 0 where the models run
            in-process on a GPU).
        n_actors: Pool size, which bounds the work in flight; default: as many as the
            cluster's free CPUs (and GPUs) allow, at most one per item.
    """
    import ray

    actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="SPREAD")(worker)
    if n_actors is None:
        free = ray.available_resources()
        n_actors = int(free.get("CPU", 1.0) // max(num_cpus, 1e-9))
        if num_gpus > 0:
            n_actors = min(n_actors, int(free.get("GPU", 0.0) // num_gpus))
    n_actors = max(1, min(n_actors, len(items)))
    if stats is not None:
        stats.workers = n_actors
    shared = [ray.put(a) for a in worker_args]
    free_actors = [actor_cls.remote(*shared) for _ in range(n_actors)]
    owner: dict[Any, Any] = {}
    pool = [n_actors]

    def submit(item: Any) -> Any:
        actor = free_actors.pop()
        ref = actor.run.remote(item)
        owner[ref] = actor
        return ref

    def release(ref: Any, died: bool) -> None:
        actor = owner.pop(ref)
        if died:
            ray.kill(actor, no_restart=True)
            if pool[0] > 1 and not _room_for(num_cpus, num_gpus):
                pool[0] -= 1
                logger.warning("%s: an actor was lost and the cluster has no room for another; %d left",
                               label, pool[0])
                return
            actor = actor_cls.remote(*shared)
        free_actors.append(actor)

    try:
        return _drain(items, submit, release, on_result, label, lambda: pool[0], stats)
    finally:
        for actor in free_actors + list(owner.values()):
            ray.kill(actor, no_restart=True)
