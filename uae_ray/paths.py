"""Per-user places of uae-ray (no imports of the rest of the package): the local stack's run
folder, found from any working directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_STACK_DIR = "UAE_STACK_DIR"
CLIENT_ENV_FILE = "client.env"


def default_stack_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$UAE_STACK_DIR``, else ``$XDG_STATE_HOME/uae-ray/stack``, else
    ``~/.local/state/uae-ray/stack`` (absolute)."""
    env = os.environ if env is None else env
    if env.get(ENV_STACK_DIR):
        return Path(env[ENV_STACK_DIR]).expanduser().absolute()
    state = Path(env["XDG_STATE_HOME"]).expanduser() if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return (state / "uae-ray" / "stack").absolute()


def running_stack_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client settings (``UAE_S3_ENDPOINT``, keys, ``UAE_TRITON_URL``, ...) that a running
    local stack wrote to ``<stack dir>/client.env`` at ``stack up``; empty when it is not up."""
    path = default_stack_dir(env) / CLIENT_ENV_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out
