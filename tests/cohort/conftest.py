"""Fixtures of the cohort-job tests that run over the real local stack."""

from __future__ import annotations

import pytest


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
