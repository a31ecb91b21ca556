"""``stack up | down | status`` of the local stack: Ray head, Triton server, S3 server and,
where Orthanc is installed, a DICOMweb PACS.

Each service runs in its own process group with its pid file in ``<run_dir>/pids`` and its log
in ``<run_dir>/logs/<name>.log``. ``stack_up`` is idempotent: services that already run are
reused once healthy, the others are started (all at once) and waited for. ``stack_down``
stops every group in parallel (SIGTERM, then SIGKILL after ``stop_timeout_s``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from uae_ray.stack import pacs, process, ray_head, s3, triton
from uae_ray.paths import CLIENT_ENV_FILE
from uae_ray.stack.config import ENV_VARS, StackConfig, StackError, ensure_credentials, write_private_file
from uae_ray.stack.service import ServiceSpec

logger = logging.getLogger(__name__)

#: Service name -> builder, in start order.
SERVICES: dict[str, Callable[[StackConfig], ServiceSpec]] = {
    s3.NAME: s3.service,
    triton.NAME: triton.service,
    ray_head.NAME: ray_head.service,
    pacs.NAME: pacs.service,
}
#: Services started by default only where their software is installed (asked for by name
#: without it, ``stack up`` fails with the install hint).
OPTIONAL: dict[str, Callable[[], bool]] = {pacs.NAME: pacs.available}


def default_services() -> list[str]:
    """The services ``stack up`` starts without a selection: all but the optional ones whose
    software is missing."""
    return [name for name in SERVICES if name not in OPTIONAL or OPTIONAL[name]()]


@dataclass(frozen=True)
class ServiceStatus:
    """State of one service.

    Attributes:
        name: ``"s3"``, ``"triton"``, ``"ray"`` or ``"pacs"``.
        pid: Pid from the pid file (``None``: not started).
        alive: The recorded process still runs.
        healthy: Its health probe succeeds.
        url: Where clients reach it.
        log: Its log file.
    """

    name: str
    pid: int | None
    alive: bool
    healthy: bool
    url: str
    log: Path


@dataclass(frozen=True)
class StackStatus:
    """State of the whole stack (what ``uae-ray stack status`` prints).

    Attributes:
        services: One entry per service, in start order.
        run_dir: The stack's run folder.
        s3_access_key_id: The S3 key id in use (never the secret), ``None`` if unknown.
    """

    services: tuple[ServiceStatus, ...]
    run_dir: Path
    s3_access_key_id: str | None = None

    @property
    def healthy(self) -> bool:
        """Every service is up and answers its health probe."""
        return bool(self.services) and all(s.healthy for s in self.services)

    @property
    def any_alive(self) -> bool:
        """At least one service process still runs."""
        return any(s.alive for s in self.services)

    def service(self, name: str) -> ServiceStatus:
        """The entry of service ``name``.

        Raises:
            KeyError: Unknown service name.
        """
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r}; known: {[s.name for s in self.services]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "run_dir": str(self.run_dir),
            "healthy": self.healthy,
            "s3_access_key_id": self.s3_access_key_id,
            "services": [{**asdict(s), "log": str(s.log)} for s in self.services],
        }

    def table(self) -> str:
        """A fixed-width table, one row per service, plus the run dir and S3 key id."""
        rows = [("service", "pid", "alive", "healthy", "url")]
        for s in self.services:
            rows.append((s.name, str(s.pid or "-"), "yes" if s.alive else "no", "yes" if s.healthy else "no", s.url))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"run dir: {self.run_dir} (logs in {self.run_dir / 'logs'})")
        if self.s3_access_key_id:
            lines.append(f"S3 access key id: {self.s3_access_key_id} (secret in {self.run_dir / 's3.env'} "
                         "or your UAE_S3_SECRET_KEY)")
        return "\n".join(lines)


def _select(names: Sequence[str] | None) -> list[str]:
    if names is None:
        return default_services()
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise StackError(f"unknown services {unknown}; known: {list(SERVICES)}")
    return [n for n in SERVICES if n in names]


@contextlib.contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    """Serialise up/down on one run dir (between processes)."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    with open(config.run_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _files(config: StackConfig, name: str) -> process.ProcessFiles:
    return process.ProcessFiles(config.pids_dir, name)


def _log_path(config: StackConfig, name: str) -> Path:
    return config.logs_dir / f"{name}.log"


def _check_ports_free(spec: ServiceSpec, host: str) -> None:
    for field_name, port in spec.ports.items():
        if process.port_open(host, port):
            var = ENV_VARS.get(field_name, field_name)
            raise StackError(
                f"{spec.name}: port {port} ({field_name}) on {host} is already in use by another process; "
                f"stop that process or choose another port with {var}"
            )


def _start(config: StackConfig, spec: ServiceSpec) -> process.ProcessRecord:
    files = _files(config, spec.name)
    stale = files.read()
    if stale is not None:  # the recorded process died: clean up what it left behind
        process.stop_group(stale, timeout_s=5.0, name=spec.name)
        files.clear()
    _check_ports_free(spec, config.host)
    spec.prepare()
    record = process.start_process(spec.command, spec.env, _log_path(config, spec.name), spec.cwd)
    files.write(record)
    logger.info("%s: started (pid %d), log %s", spec.name, record.pid, record.log)
    return record


def _exit_reason(record: process.ProcessRecord) -> str | None:
    if process.pid_alive(record.pid, record.start_ticks):
        return None
    code = process.exit_code(record.pid)
    return "the process exited" + (f" with code {code}" if code is not None else "")


def stack_up(config: StackConfig, services: Sequence[str] | None = None) -> StackStatus:
    """Start the stack (or the named services) and wait until every service is healthy.

    Idempotent: a service whose recorded process still runs is reused once its health probe
    succeeds. Random S3 credentials are generated (``<run_dir>/s3.env``) when none are set.

    Args:
        config: The stack configuration (:meth:`StackConfig.load`).
        services: Subset of ``("s3", "triton", "ray", "pacs")``; default all
            (:func:`default_services`).

    Returns:
        The status after start-up.

    Raises:
        StackError: A port is taken, a file is missing, or a service did not become healthy
            within ``config.start_timeout_s`` (the message names its log file). The service
            that failed is stopped; the others keep running (``stack_down`` stops them).
    """
    names = _select(services)
    config = ensure_credentials(config)
    t0 = time.monotonic()
    with _locked(config):
        config.logs_dir.mkdir(parents=True, exist_ok=True)
        specs = {name: SERVICES[name](config) for name in names}
        records: dict[str, process.ProcessRecord] = {}
        started: set[str] = set()
        try:
            for name, spec in specs.items():
                running = _files(config, name).alive()
                if running is not None:
                    logger.info("%s: already running (pid %d)", name, running.pid)
                    records[name] = running
                else:
                    records[name] = _start(config, spec)
                    started.add(name)
            deadline = t0 + config.start_timeout_s
            for name, spec in specs.items():
                record = records[name]
                reason = process.wait_until(spec.healthy, max(deadline - time.monotonic(), 1.0),
                                            abort=lambda r=record: _exit_reason(r))
                if reason is not None:
                    if name in started:
                        process.stop_group(record, timeout_s=spec.stop_timeout_s, name=name)
                        _files(config, name).clear()
                    hint = "" if name in started else " (it was already running; try `uae-ray stack down` first)"
                    raise StackError(
                        f"{name} did not become healthy ({reason} after {time.monotonic() - t0:.0f} s){hint}; "
                        f"see {_log_path(config, name)}"
                    )
                logger.info("%s: healthy after %.1f s (%s)", name, time.monotonic() - t0, spec.url)
        except KeyboardInterrupt:
            _stop(config, sorted(started))
            raise
    status = stack_status(config, names)
    if status.healthy and (set(names) == set(default_services()) or stack_status(config).healthy):
        env = client_env(config)
        write_private_file(config.run_dir / CLIENT_ENV_FILE, "# written by `uae-ray stack up`, removed by `stack down`: "
                           "the running stack's client settings, for every verb from any folder\n"
                           + "".join(f"{k}={v}\n" for k, v in env.items()))
    return status


def _stop(config: StackConfig, names: Sequence[str]) -> list[str]:
    """Stop the named services in parallel; return the names that left processes behind."""
    targets = []
    for name in names:
        record = _files(config, name).read()
        if record is not None:
            targets.append((name, record))
    if not targets:
        return []

    def stop(target: tuple[str, process.ProcessRecord]) -> tuple[bool, float]:
        t0 = time.monotonic()
        return process.stop_group(target[1], config.stop_timeout_s, target[0]), time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = list(pool.map(stop, targets))
    left = []
    for (name, _), (gone, seconds) in zip(targets, results):
        if gone:
            _files(config, name).clear()
            logger.info("%s: stopped in %.1f s", name, seconds)
        else:
            left.append(name)
    return left


def stack_down(config: StackConfig, services: Sequence[str] | None = None) -> StackStatus:
    """Stop the stack (or the named services): SIGTERM each process group, SIGKILL after
    ``config.stop_timeout_s``. Only processes recorded in the run dir are touched.

    Returns:
        The status afterwards.

    Raises:
        StackError: Some process survived SIGKILL.
    """
    names = _select(services) if services is not None else list(SERVICES)  # stop what runs, installed or not
    t0 = time.monotonic()
    with _locked(config):
        left = _stop(config, names)
    if left:
        raise StackError(f"could not stop {left}; see the pid files in {config.pids_dir}")
    (config.run_dir / CLIENT_ENV_FILE).unlink(missing_ok=True)
    logger.info("stack down after %.1f s", time.monotonic() - t0)
    return stack_status(config, services)


def stack_status(config: StackConfig, services: Sequence[str] | None = None) -> StackStatus:
    """Pid, liveness, health and URL of each service (probes take at most a few seconds)."""
    rows = []
    for name in _select(services):
        spec = SERVICES[name](config)
        record = _files(config, name).alive()
        healthy = False
        if record is not None:
            try:
                healthy = spec.healthy()
            except Exception:
                healthy = False
        rows.append(ServiceStatus(name, record.pid if record else None, record is not None, healthy,
                                  spec.url, _log_path(config, name)))
    return StackStatus(tuple(rows), config.run_dir, config.s3_access_key)


def client_env(config: StackConfig) -> dict[str, str]:
    """Environment for clients of the stack (CLI, demo, Ray jobs).

    Returns:
        ``UAE_S3_ENDPOINT`` (``host:port``), ``UAE_S3_SECURE``, ``UAE_S3_ACCESS_KEY``,
        ``UAE_S3_SECRET_KEY``, ``UAE_TRITON_URL`` (``host:port``), ``RAY_ADDRESS`` (the
        dashboard URL, for ``ray job submit``), ``UAE_RAY_ADDRESS`` (GCS ``host:port``, for
        ``ray.init`` drivers) and the Ray settings the head runs with (``RAY_AUTH_MODE``,
        ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``), and with a PACS account ``UAE_PACS_URL`` (the
        DICOMweb root), ``UAE_PACS_USER``, ``UAE_PACS_PASSWORD``. Contains secrets: never log it.

    Raises:
        StackError: No S3 credentials are known (the stack was never started).
    """
    if not config.has_credentials:
        raise StackError(
            f"no S3 credentials for the local stack: run `uae-ray stack up` first (it writes "
            f"{config.s3_env_file}) or set UAE_S3_ACCESS_KEY/UAE_S3_SECRET_KEY"
        )
    pacs_env = ({"UAE_PACS_URL": f"{config.pacs_url}/dicom-web", "UAE_PACS_USER": str(config.pacs_user),
                 "UAE_PACS_PASSWORD": str(config.pacs_password)} if config.has_pacs_credentials else {})
    return {
        "UAE_S3_ENDPOINT": config.s3_endpoint,
        "UAE_S3_SECURE": "false",
        "UAE_S3_ACCESS_KEY": str(config.s3_access_key),
        "UAE_S3_SECRET_KEY": str(config.s3_secret_key),
        "UAE_TRITON_URL": config.triton_url,
        "RAY_ADDRESS": config.ray_dashboard_url,
        "UAE_RAY_ADDRESS": config.ray_gcs_address,
        "RAY_AUTH_MODE": ray_head.RAY_ENV["RAY_AUTH_MODE"],
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": ray_head.RAY_ENV["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"],
        **pacs_env,
    }
