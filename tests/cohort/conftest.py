"""Fixtures of the cohort-job tests that run over the real local stack."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def submit_job(services):
    """``submit_job(job, *args)`` runs ``jobs/cohort_<job>.py`` through ``ray job submit`` on the
    stack's Ray head and returns the finished process (the job's output is in its stdout)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]

    def submit(job: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", services["RAY_ADDRESS"],
               "--", sys.executable, str(repo / "jobs" / f"cohort_{job}.py"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **services}, timeout=timeout)

    return submit
