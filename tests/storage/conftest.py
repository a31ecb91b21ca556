"""Fixtures for the storage tests.

S3 tests use the session fixture ``s3_env`` of ``tests/conftest.py`` (a dict with
``UAE_S3_ENDPOINT``, ``UAE_S3_ACCESS_KEY``, ``UAE_S3_SECRET_KEY`` of a running S3 server); each
test gets its own fresh bucket.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from uae_ray.storage import clients, objects

S3_ENV_KEYS = ("UAE_S3_ENDPOINT", "UAE_S3_ACCESS_KEY", "UAE_S3_SECRET_KEY", "UAE_S3_SECURE",
               "UAE_S3_REGION")


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No UAE_S3_* variables and no user config file unless a test sets them."""
    for key in S3_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    missing = tmp_path_factory.mktemp("cfg") / "absent.yaml"
    monkeypatch.setenv("UAE_CONFIG", str(missing))
    yield
    clients.clear_client_cache()


@pytest.fixture
def s3_bucket(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>`` on the test S3 server, with the environment pointing at it."""
    for key, value in s3_env.items():
        if key.startswith("UAE_S3_"):
            monkeypatch.setenv(key, str(value))
    uri = f"s3://uae-test-{uuid.uuid4().hex[:12]}"
    objects.ensure_bucket(uri)
    yield uri
    objects.delete(uri, recursive=True)
    try:
        clients.minio_client(uri).remove_bucket(uri[len("s3://") :])
    except Exception:  # noqa: BLE001 - best-effort cleanup (SeaweedFS may lag on empty check)
        pass


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable root URI: a temp folder, or a prefix in a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"
