"""Start, identify and stop service processes (one process group each) and probe ports.

A started service gets its own session/process group, so that stopping it signals every
process it spawned. Its pid file (``<pids_dir>/<name>.pid``, the pid as text) comes with a
``<name>.json`` record holding the kernel start time of the process, so a recycled pid is never
taken for the service (Linux ``/proc``; elsewhere only ``kill(pid, 0)`` is checked).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

_CHILDREN: dict[int, subprocess.Popen] = {}  # started by this process: polled to reap zombies


@dataclass(frozen=True)
class ProcessRecord:
    """What the pid files say about a started service process.

    Attributes:
        pid: Process id (also the process-group id: the process leads its own session).
        start_ticks: Kernel start time (``/proc/<pid>/stat`` field 22), ``None`` if unknown.
        command: The command line it was started with.
        log: Its log file.
    """

    pid: int
    start_ticks: int | None
    command: tuple[str, ...]
    log: Path


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may contain spaces.
    return [text[: text.index(" ")]] + ["comm"] + text[text.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[21]) if stat else None


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, started at ``start_ticks``."""
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc (macOS): best effort
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if stat[2] in ("Z", "X"):
        return False
    return start_ticks is None or int(stat[21]) == start_ticks


def group_members(pgid: int) -> list[int]:
    """Pids of live processes in process group ``pgid`` (Linux; elsewhere the leader only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid] if pid_alive(pgid) else []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat and int(stat[4]) == pgid and stat[2] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class ProcessFiles:
    """Pid file + record of one named service under a pids folder."""

    def __init__(self, pids_dir: Path, name: str) -> None:
        self.pid_file = pids_dir / f"{name}.pid"
        self.record_file = pids_dir / f"{name}.json"

    def read(self) -> ProcessRecord | None:
        """The record, or ``None`` when the service was never started (or was stopped)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            data = json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            data = {}
        return ProcessRecord(pid, data.get("start_ticks"), tuple(data.get("command", ())), Path(data.get("log", "")))

    def write(self, record: ProcessRecord) -> None:
        """Store ``record`` (pid file last, so a reader never sees a pid without its record)."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        data = {"pid": record.pid, "start_ticks": record.start_ticks, "command": list(record.command),
                "log": str(record.log), "started_at": time.time()}
        self.record_file.write_text(json.dumps(data, indent=1))
        self.pid_file.write_text(f"{record.pid}\n")

    def clear(self) -> None:
        """Remove the pid file and record."""
        for path in (self.pid_file, self.record_file):
            path.unlink(missing_ok=True)

    def alive(self) -> ProcessRecord | None:
        """The record if its process is still the one we started, else ``None``."""
        record = self.read()
        if record is not None and pid_alive(record.pid, record.start_ticks):
            return record
        return None


def start_process(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> ProcessRecord:
    """Start ``command`` in a new session (its own process group), output appended to ``log``.

    Args:
        command: Program and arguments.
        env: Complete environment of the process.
        log: Log file (stdout and stderr; appended to).
        cwd: Working directory.

    Returns:
        The record to store in the pid files.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {command[0]}\n".encode())
        out.flush()
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True, close_fds=True,
        )
    _CHILDREN[child.pid] = child
    return ProcessRecord(child.pid, _start_ticks(child.pid), tuple(command), log)


def exit_code(pid: int) -> int | None:
    """Exit code of a child started by this process once it ended, else ``None``."""
    child = _CHILDREN.get(pid)
    return child.poll() if child is not None else None


def stop_group(record: ProcessRecord, timeout_s: float, name: str = "") -> bool:
    """SIGTERM the process group of ``record``, SIGKILL what is left after ``timeout_s``.

    Only signals the group when the recorded process is still ours (start time matches) and
    leads its own group; otherwise only leftover members of the group are killed.

    Returns:
        True if no process of the group is left.
    """
    pgid = record.pid
    label = name or str(pgid)
    ours = pid_alive(record.pid, record.start_ticks)
    if not ours and pid_alive(record.pid):
        return True  # the pid was recycled: our group (whose id it was) is gone
    try:
        if ours and os.getpgid(record.pid) != pgid:
            os.kill(record.pid, signal.SIGTERM)  # not a group leader (should not happen)
        elif ours or group_members(pgid):
            # A group id stays reserved while any member lives, so leftovers of a dead
            # leader are still ours.
            os.killpg(pgid, signal.SIGTERM)
        else:
            return True
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not group_members(pgid):
            return True
        time.sleep(0.2)
    left = group_members(pgid)
    if left:
        logger.warning("%s: %d process(es) still running %.0f s after SIGTERM; sending SIGKILL", label,
                       len(left), timeout_s)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not group_members(pgid):
            return True
        time.sleep(0.1)
    return not group_members(pgid)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.5,
               abort: Callable[[], str | None] | None = None) -> str | None:
    """Poll ``check`` until it is true.

    Args:
        check: Health probe (exceptions count as "not yet").
        timeout_s: Give up after this long.
        interval_s: Pause between probes.
        abort: Called between probes; a returned message stops waiting early (e.g. the
            process exited).

    Returns:
        ``None`` on success, else the reason (the abort message or ``"timeout"``).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return None
        except Exception as exc:  # a probe error only means "not healthy yet"
            logger.debug("probe failed: %s", exc.__class__.__name__)
        if abort is not None:
            reason = abort()
            if reason:
                return reason
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(interval_s)
