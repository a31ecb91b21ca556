"""Faults injected into a running cohort job, and the check that nothing was lost.

Used by ``uae-ray bench cohort`` (figures) and by the fault tests (against the real stack):
run the job in a thread, wait until it has written ``after`` outputs, inject the fault (kill -9
of a worker, a node removed, a service stopped), let the job end, then compare its outputs with
those of an undisturbed run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class FaultRun:
    """What happened to a job run under a fault.

    Attributes:
        summary: The job's summary (None when it raised).
        error: The job's exception as one line (None when it finished).
        fault_at_s: Seconds after the start when the fault was injected (None: never, the job
            ended before ``after`` outputs).
        wall_s: Seconds the job ran.
        detail: What the fault did (e.g. the killed pid).
    """

    summary: dict[str, Any] | None
    error: str | None
    fault_at_s: float | None
    wall_s: float
    detail: dict[str, Any] = field(default_factory=dict)


def count_outputs(folder: str, suffix: str = ".parquet") -> int:
    """Number of finished output objects under ``folder`` (0 while it does not exist)."""
    from uae_ray.storage import list_uris

    try:
        return len(list_uris(folder, suffix))
    except (FileNotFoundError, OSError):
        return 0


def run_with_fault(job: Callable[[], dict[str, Any]], outputs: str, after: int,
                   fault: Callable[[], dict[str, Any] | None], timeout_s: float = 900.0) -> FaultRun:
    """Runs ``job()`` in a thread; once ``after`` outputs exist under ``outputs``, calls
    ``fault()`` (in this thread) and waits for the job to end.

    Raises:
        TimeoutError: The job did not end within ``timeout_s``.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["summary"] = job()
        except Exception as e:  # reported in the FaultRun
            from uae_ray.volume.errors import one_line

            box["error"] = one_line(e)

    t0 = time.monotonic()
    thread = threading.Thread(target=target, daemon=True, name="faulted-job")
    thread.start()
    fault_at, detail = None, {}
    while thread.is_alive() and time.monotonic() - t0 < timeout_s:
        if fault_at is None and count_outputs(outputs) >= after:
            fault_at = time.monotonic() - t0
            detail = fault() or {}
            logger.info("fault injected after %.1f s: %s", fault_at, detail)
        thread.join(timeout=0.2)
    if thread.is_alive():
        raise TimeoutError(f"the job did not end within {timeout_s:.0f} s")
    return FaultRun(box.get("summary"), box.get("error"), fault_at, time.monotonic() - t0, detail)


def actor_pids(class_name: str) -> list[int]:
    """Pids of this machine's Ray worker processes that hold an actor of ``class_name`` (Ray
    titles them ``ray::<class_name>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(f"ray::{class_name}"):
            pids.append(int(proc.name))
    return sorted(pids)


def kill_actor(class_name: str, wait_s: float = 30.0) -> dict[str, Any]:
    """``kill -9`` of one worker process holding a ``class_name`` actor (waits for one)."""
    deadline = time.monotonic() + wait_s
    while not (pids := actor_pids(class_name)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ray::{class_name} process to kill")
        time.sleep(0.2)
    os.kill(pids[0], signal.SIGKILL)
    return {"killed_pid": pids[0], "actors_seen": len(pids)}


def compare_outputs(reference: str, other: str, suffix: str = ".parquet") -> dict[str, Any]:
    """Compares the stored embedding maps of two runs scan by scan (decoded arrays, exactly).

    Returns:
        ``{"scans": n, "equal": bool, "missing": [...], "extra": [...], "different": [...]}``.
    """
    from uae_ray.cohort.maps_io import read_maps
    from uae_ray.storage import list_uris

    def by_name(folder: str) -> dict[str, str]:
        return {uri.rsplit("/", 1)[-1]: uri for uri in list_uris(folder, suffix)}

    ref, got = by_name(reference), by_name(other)
    different = []
    for name in sorted(set(ref) & set(got)):
        a, b = read_maps(ref[name]), read_maps(got[name])
        same = all(np.array_equal(x, y) for x, y in ((a.local, b.local), (a.global_, b.global_), (a.valid, b.valid)))
        if not same:
            different.append(name)
    missing, extra = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
    return {"scans": len(ref), "equal": not (missing or extra or different), "missing": missing, "extra": extra,
            "different": different}


def manifest_check(manifest_uri: str, scan_ids: list[str]) -> dict[str, Any]:
    """Whether every scan is ``ok`` exactly once in the saved manifest snapshot (its rows as
    stored, not merged)."""
    from uae_ray.storage import Manifest, read_table

    manifest = Manifest(manifest_uri, load=False)
    table = read_table(manifest.snapshot_uri)
    ids = table.column("scan_id").to_pylist()
    ok = [i for i, s in zip(ids, table.column("status").to_pylist()) if s == "ok"]
    return {"rows": len(ids), "ok": len(ok), "unique": len(set(ids)) == len(ids),
            "all_ok_once": sorted(ok) == sorted(scan_ids)}
