"""What the manager needs to know about one service, and small probe helpers."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class ServiceSpec:
    """How to prepare, start, probe and stop one service of the local stack.

    Attributes:
        name: Short name (pid/log file stem, status row): ``"ray"``, ``"triton"``, ``"s3"``.
        command: Program and arguments.
        env: Complete environment of the process.
        cwd: Working directory.
        url: Main URL shown by ``status``.
        ports: ``{config field name: port}`` the service listens on (checked free before
            starting).
        healthy: Probe; True when the service answers as expected.
        prepare: Run before starting (write config files, install the Triton stub...).
        stop_timeout_s: SIGTERM -> SIGKILL bound.
    """

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    url: str
    ports: dict[str, int]
    healthy: Callable[[], bool]
    prepare: Callable[[], None] = field(default=lambda: None)
    stop_timeout_s: float = 40.0


def ports_of(config: object, names: tuple[str, ...]) -> dict[str, int]:
    """``{name: config.<name>}`` for the port fields ``names``."""
    return {name: int(getattr(config, name)) for name in names}


def venv_bin() -> Path:
    """The ``bin`` folder of the running interpreter's environment (the venv)."""
    return Path(sys.executable).parent


#: Variables never passed to a service unless it needs them (see ``ray_head``; the PACS reads
#: its account from its own config file).
SECRET_VARS = ("UAE_S3_ACCESS_KEY", "UAE_S3_SECRET_KEY", "UAE_PACS_USER", "UAE_PACS_PASSWORD")


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without S3 secrets, with the venv's ``bin`` first on PATH,
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    path = env.get("PATH", "")
    env["PATH"] = os.pathsep.join([str(venv_bin())] + [p for p in path.split(os.pathsep) if p])
    env.update(extra or {})
    return env


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True if ``GET url`` answers with a 2xx status (no proxies: loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
