"""The driver loop of the cohort jobs on a local Ray instance: a service that stays down stops
the job in one line; the per-stage clock and the unreachable-service classification."""

from __future__ import annotations

import time

import pytest

from uae_ray.cohort.runner import DrainStats, ServiceUnreachableError, StageClock, fan_out, unreachable
from uae_ray.storage import S3UnreachableError, StorageError


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_service_down_three_scans_in_a_row_stops_the_job(local_ray) -> None:
    def _down(item: str) -> dict:  # defined here: shipped to the worker by value
        return {"scan_id": item, "uri": item, "status": "error", "error": f"{item}: cannot reach S3 endpoint",
                "unreachable": "S3 endpoint 127.0.0.1:9 unreachable", "retries": 2, "stages": {"read": 0.5}}

    seen: list[dict] = []
    stats = DrainStats()
    with pytest.raises(ServiceUnreachableError) as err:
        fan_out(_down, [f"s{i}" for i in range(6)], (), seen.append, "cohort embed", max_in_flight=1, stats=stats)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cohort embed stopped: S3 endpoint 127.0.0.1:9 unreachable")
    assert "3 scans in a row" in message and "3 left undone" in message and "re-run" in message
    assert len(seen) == 3 and stats.retries == 6 and stats.stage_seconds == {"read": 1.5}


def test_a_task_that_raises_is_one_error_record_not_run_again(local_ray) -> None:
    def _raises(item: str) -> dict:
        raise RuntimeError(f"bug on {item}")

    seen: list[dict] = []
    stats = DrainStats()
    fan_out(_raises, ["s0", "s1"], (), seen.append, "cohort embed", stats=stats)
    assert [r["status"] for r in seen] == ["error", "error"] and stats.resubmitted == 0
    assert all("bug on" in r["error"] and "\n" not in r["error"] for r in seen)


def test_unreachable_names_the_service_and_nothing_else() -> None:
    from uae_ray.serving.triton import TritonUnavailableError

    assert unreachable(S3UnreachableError("s3://b/k: cannot reach", "127.0.0.1:9")) == "S3 endpoint 127.0.0.1:9 unreachable"
    assert unreachable(TritonUnavailableError("no", "127.0.0.1:8")) == "Triton at 127.0.0.1:8 unreachable"
    assert unreachable(StorageError("s3://b/k: S3 AccessDenied")) is None and unreachable(ValueError("x")) is None


def test_stage_clock_sums_each_stage() -> None:
    clock = StageClock()
    for _ in range(2):
        with clock("read"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError), clock("write"):
        raise RuntimeError("counted anyway")
    assert set(clock.seconds) == {"read", "write"} and clock.seconds["read"] >= 0.02
