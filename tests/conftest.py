"""Session fixtures shared by all tests.

- ``shared_data``: the curated cases in ``../shared/data`` (skips when absent).
- ``s3_env``: a running S3 server (only the S3 service of the local stack, unless the full
  stack is up already) as a dict of ``UAE_S3_*`` variables.
- ``stack``: the full local stack (Ray head, Triton, S3 and, where Orthanc is installed, the
  PACS) on free loopback ports in a temp run dir, started once per session and stopped at the end.
- ``services``: (module scope) the stack's client settings in the environment.

Both service fixtures share one :class:`TestStack` (one run dir, one set of ports), so S3 is
started at most once per session; ``stack`` adds Triton and Ray to it when first requested.
Tests marked ``stack_teardown`` run last (they stop the stack and check nothing is left).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from uae_ray.stack import StackConfig, StackError, client_env, ensure_credentials, stack_down, stack_up
from uae_ray.stack.process import free_port

from tests.shared import require_data

logger = logging.getLogger(__name__)

# Ray reads these when it is first imported (test modules import it at collection time), and a
# driver whose settings differ from the loopback head's hangs in ray.init: set them for the
# whole session before anything imports ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack_teardown: stops the session stack; runs after every other test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move ``stack_teardown`` tests to the end (stable for the rest)."""
    items.sort(key=lambda item: item.get_closest_marker("stack_teardown") is not None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository root (skips the test when it is absent)."""
    return require_data()


def make_free_port_config(run_dir: Path, checkpoint: Path | None = None) -> StackConfig:
    """A :class:`StackConfig` in ``run_dir`` whose ports are all free right now (loopback)."""
    names = [f.name for f in fields(StackConfig) if f.name.endswith("_port")]
    ports: set[int] = set()
    while len(ports) < len(names):
        ports.add(free_port())
    values = dict(zip(names, sorted(ports)))
    return StackConfig(run_dir=run_dir, checkpoint=checkpoint, ray_num_cpus=2, start_timeout_s=180.0,
                       pacs_stable_age_s=1.0, **values)


@pytest.fixture(scope="session")
def free_port_config() -> Callable[..., StackConfig]:
    """Factory ``(run_dir, checkpoint=None) -> StackConfig`` with free loopback ports."""
    return make_free_port_config


def _log_tails(config: StackConfig, lines: int = 15) -> str:
    out = []
    for log in sorted(config.logs_dir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(out)


@dataclass
class TestStack:
    """The session's stack: one config, services started on demand, stopped at the end."""

    __test__ = False  # not a test class

    config: StackConfig

    def ensure(self, services: tuple[str, ...] | None = None) -> dict[str, str]:
        """Start the services that are not healthy yet; return :func:`client_env`."""
        try:
            stack_up(self.config, services)
        except StackError as exc:
            pytest.fail(f"{exc}\n{_log_tails(self.config)}", pytrace=False)
        return client_env(self.config)


def _test_checkpoint(tmp: Path) -> Path | None:
    """The shipped default weights if present, else a seeded tiny checkpoint in ``tmp``."""
    from uae_ray.models import build_tiny, default_checkpoint, save_checkpoint

    if default_checkpoint().is_file():
        return None
    import torch

    torch.manual_seed(0)
    path = tmp / "tiny_test.pt"
    save_checkpoint(build_tiny(), path, meta={"version": "tiny-test"})
    return path


@pytest.fixture(scope="session")
def _test_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestStack]:
    base = tmp_path_factory.mktemp("stack")
    config = ensure_credentials(make_free_port_config(base / "run", _test_checkpoint(base)))
    holder = TestStack(config)
    try:
        yield holder
    finally:
        try:
            stack_down(config)
        except StackError as exc:
            logger.error("stopping the test stack failed: %s", exc)


@pytest.fixture(scope="session")
def s3_env(_test_stack: TestStack) -> dict[str, str]:
    """``UAE_S3_ENDPOINT`` / ``UAE_S3_SECURE`` / ``UAE_S3_ACCESS_KEY`` / ``UAE_S3_SECRET_KEY``
    of a running S3 server (the stack's S3 service; the full stack is reused when up)."""
    env = _test_stack.ensure(("s3",))
    return {k: v for k, v in env.items() if k.startswith("UAE_S3_")}


@dataclass(frozen=True)
class RunningStack:
    """What the ``stack`` fixture yields: the config and the client environment."""

    config: StackConfig
    env: dict[str, str]


@pytest.fixture(scope="session")
def stack(_test_stack: TestStack) -> RunningStack:
    """The full local stack (Ray head, Triton, S3) on free ports, up for the session."""
    return RunningStack(_test_stack.config, _test_stack.ensure())


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def services(stack, monkeypatch_module):
    """The stack's client settings in the environment (S3 credentials, Ray auth mode, loopback;
    not RAY_ADDRESS: each job is given its address), and no Ray connection left behind."""
    import ray

    ray.shutdown()  # a local instance of an earlier module
    for key, value in stack.env.items():
        if key != "RAY_ADDRESS":
            monkeypatch_module.setenv(key, value)
    yield stack.env
    ray.shutdown()
