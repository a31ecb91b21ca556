"""Faults in the middle of ``cohort embed`` on the real stack (Ray head, Triton, S3): a worker
killed, Triton restarted, S3 stopped. Each job's final outputs are compared with those of an
undisturbed run, scan by scan, and every scan must be ``ok`` exactly once in the manifest.
"""

from __future__ import annotations

import time

import pytest

from uae_ray.bench.faults import compare_outputs, kill_actor, manifest_check, run_with_fault
from uae_ray.cohort.embed import EMBED_MANIFEST, run_cohort_embed
from uae_ray.stack import stack_down, stack_up
from uae_ray.storage import discover_scans, join, list_uris, upload_file

pytestmark = pytest.mark.stack

CASES = ("openkbp_pt180", "openkbp_pt181", "openkbp_pt183", "openkbp_pt184")


@pytest.fixture(scope="module")
def archive(services, shared_data):
    root = "s3://faults-test/archive"
    for case in CASES:
        upload_file(shared_data / "cases" / case / "image.nii.gz", join(root, f"{case}.nii.gz"))
    return root


@pytest.fixture(scope="module")
def reference(services, archive):
    """The undisturbed run."""
    out = "s3://faults-test/reference"
    summary = run_cohort_embed(archive, out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"], workers=2)
    assert summary["done"] == len(CASES) and summary["failed"] == 0
    return out


def _job(services, archive, out):
    return lambda: run_cohort_embed(archive, out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"], workers=2)


def _assert_nothing_lost(archive: str, reference: str, out: str) -> None:
    ids = [s.scan_id for s in discover_scans(archive)]
    check = manifest_check(join(out, EMBED_MANIFEST), ids)
    assert check["all_ok_once"] and check["unique"] and check["rows"] == len(ids), check
    same = compare_outputs(join(reference, "embeddings"), join(out, "embeddings"))
    assert same["equal"] and same["scans"] == len(ids), same
    leftovers = [u for u in list_uris(join(out, "embeddings")) if not u.endswith(".parquet")]
    assert not leftovers, leftovers  # no temporary or partial objects


def test_worker_killed_mid_job_every_scan_ok_once(services, archive, reference):
    out = "s3://faults-test/killed"
    run = run_with_fault(_job(services, archive, out), join(out, "embeddings"), 1,
                         lambda: kill_actor("EmbedWorker"))
    assert run.error is None, run.error
    assert run.fault_at_s is not None and run.detail["killed_pid"] > 0
    print(f"\nworker killed after {run.fault_at_s:.1f} s: resubmitted {run.summary['resubmitted']}, "
          f"retries {run.summary['retries']}")
    assert run.summary["done"] == len(CASES) and run.summary["failed"] == 0
    _assert_nothing_lost(archive, reference, out)


def test_triton_restarted_mid_job_is_retried_with_backoff(stack, services, archive, reference):
    out = "s3://faults-test/triton-restart"

    def restart() -> dict:
        t0 = time.monotonic()
        stack_down(stack.config, ["triton"])
        time.sleep(2.0)  # requests meanwhile meet a closed port
        stack_up(stack.config, ["triton"])
        return {"restart_s": round(time.monotonic() - t0, 1)}

    try:
        run = run_with_fault(_job(services, archive, out), join(out, "embeddings"), 1, restart)
    finally:
        stack_up(stack.config, ["triton"])
    assert run.error is None, run.error
    print(f"\nTriton restarted in {run.detail['restart_s']} s: retries {run.summary['retries']}, "
          f"resubmitted {run.summary['resubmitted']}")
    assert run.summary["done"] == len(CASES) and run.summary["failed"] == 0
    assert run.summary["retries"] >= 1  # requests met the restart and were retried
    _assert_nothing_lost(archive, reference, out)


def test_s3_down_mid_job_fails_in_one_line_and_a_rerun_finishes(stack, services, archive, reference):
    out = "s3://faults-test/s3-down"

    def stop_s3() -> dict:
        stack_down(stack.config, ["s3"])
        return {"s3": "stopped"}

    try:
        run = run_with_fault(_job(services, archive, out), join(out, "embeddings"), 1, stop_s3)
    finally:
        stack_up(stack.config, ["s3"])
    assert run.fault_at_s is not None
    assert run.error is not None, run.summary  # the job cannot finish without its storage
    port = stack.env["UAE_S3_ENDPOINT"].rsplit(":", 1)[-1]
    assert "\n" not in run.error and "S3 endpoint" in run.error and port in run.error, run.error
    print(f"\nS3 stopped after {run.fault_at_s:.1f} s; the job stopped after {run.wall_s:.1f} s: {run.error}")
    again = run_cohort_embed(archive, out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"], workers=2)
    assert again["failed"] == 0 and again["skipped"] >= 1  # what finished before the outage is kept
    _assert_nothing_lost(archive, reference, out)
