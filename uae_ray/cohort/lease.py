"""One job per output prefix: a lease object ``<out>/manifests/<job>.lease`` that a running job
holds (and renews) and a second job on the same prefix sees, so two jobs never interleave their
manifests and parts. A lease whose process is gone (same host, pid not running) is taken over
at once.

The lease is JSON ``{token, host, pid, job, started, renewed}``, written atomically and renewed
every ``ttl_s / 3`` by a background thread; a lease not renewed for ``ttl_s`` is stale (its job
died) and is taken over with a warning. Taking a lease is write, wait ``settle_s``, read back: of
two jobs started within that window the later writer wins and the other refuses. S3 here has no
conditional PUT, so two starts closer than the write latency could both proceed (a known limit).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from types import TracebackType

from uae_ray.storage import delete, exists, is_s3, join, read_bytes, write_bytes_atomic

logger = logging.getLogger(__name__)


class LeaseHeldError(RuntimeError):
    """Another live job holds the output prefix (one line naming it)."""


def _dead_here(held: dict) -> bool:
    """Whether a lease was taken on this host by a process that no longer runs (a killed job:
    its lease is free at once instead of after ``ttl_s``)."""
    if held.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(held.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError, OverflowError):
        return False
    return int(held.get("pid", 0)) <= 0


class JobLease:
    """Context manager: hold ``<out>/manifests/<job>.lease`` while a cohort job runs.

    Raises (on enter):
        LeaseHeldError: a live lease of another job is there.
    """

    def __init__(self, out: str, job: str, ttl_s: float = 120.0, settle_s: float = 0.5) -> None:
        self.uri = join(out, "manifests", f"{job}.lease")
        self.job, self.ttl_s, self.settle_s = job, float(ttl_s), float(settle_s)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # local folders this lease creates are removed again if the job leaves them empty
        folders = [join(out, "manifests"), out]
        self._new_dirs = [d for d in folders if not is_s3(d) and not os.path.exists(d)]

    def _doc(self) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "job": self.job,
                "started": self.started, "renewed": time.time()}

    def _read(self) -> dict | None:
        try:
            return json.loads(read_bytes(self.uri).decode("utf-8")) if exists(self.uri) else None
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        write_bytes_atomic(self.uri, json.dumps(self._doc()).encode("utf-8"))

    def __enter__(self) -> JobLease:
        held = self._read()
        if held and held.get("token") != self.token:
            age = time.time() - float(held.get("renewed", 0))
            if age < self.ttl_s and not _dead_here(held):
                raise LeaseHeldError(
                    f"{self.uri}: another `cohort {held.get('job')}` (host {held.get('host')}, pid {held.get('pid')}, "
                    f"renewed {age:.0f} s ago) is writing to this output; wait for it to finish, or remove the lease "
                    f"if that job is gone")
            logger.warning("%s: taking over a stale lease (pid %s on %s, %s)", self.uri, held.get("pid"),
                           held.get("host"), "gone" if _dead_here(held) else f"not renewed for {age:.0f} s")
        self._write()
        time.sleep(self.settle_s)
        now = self._read()
        if not now or now.get("token") != self.token:
            raise LeaseHeldError(f"{self.uri}: another job took this output at the same moment; run one at a time")
        self._thread = threading.Thread(target=self._renew, name="uae-ray-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; the job goes on
                logger.warning("%s: could not renew the lease (%s)", self.uri, type(e).__name__)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._read()
            if held and held.get("token") == self.token:
                delete(self.uri)
        except OSError as e:  # storage down: the lease expires by itself after ttl_s
            logger.warning("%s: lease not released (%s); it expires in %.0f s", self.uri, type(e).__name__,
                           self.ttl_s)
        for folder in self._new_dirs:  # a job that stopped before writing anything leaves nothing
            try:
                os.rmdir(folder)
            except OSError:
                pass
