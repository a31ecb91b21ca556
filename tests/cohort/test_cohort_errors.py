"""Cohort jobs with nothing to work on fail in one line with exit 2 and write nothing: a mistyped
archive, S3 that cannot be reached, a pair whose lesions file is broken (refused before any
embedding)."""

from __future__ import annotations

import logging
import os

import pytest

from uae_ray.cli import main
from uae_ray.stack.process import free_port


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("job", ["embed", "landmarks"])
def test_a_mistyped_archive_is_an_error_not_an_empty_run(job, shared_data, tmp_path, caplog):
    out = tmp_path / "out"
    case = shared_data / "cases" / "ts_example_ct"
    extra = ["--template", str(case / "image.nii.gz"), "--points", str(case / "landmarks.csv")] if job == "landmarks" else []
    code = main(["cohort", job, "--archive", str(tmp_path / "archve"), "--out", str(out), *extra])
    assert code == 2 and not out.exists()
    (line,) = _errors(caplog)
    assert str(tmp_path / "archve") in line and "no scans found (no such folder or prefix)" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a scan")
    assert main(["cohort", "embed", "--archive", str(empty), "--out", str(out)]) == 2
    assert "no image files" in _errors(caplog)[-1] and not out.exists()


def test_s3_down_is_one_line_naming_the_endpoint(tmp_path, caplog, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("UAE_S3_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("UAE_S3_ACCESS_KEY", "k" * 8)
    monkeypatch.setenv("UAE_S3_SECRET_KEY", "s" * 12)
    monkeypatch.setenv("UAE_S3_SECURE", "false")
    code = main(["cohort", "embed", "--archive", "s3://archive/ct", "--out", str(tmp_path / "out")])
    assert code == 2
    (line,) = _errors(caplog)
    assert "s3://archive/ct" in line and f"127.0.0.1:{port}" in line and "\n" not in line
    assert "s" * 12 not in line and "Traceback" not in line


def test_cohort_track_refuses_a_broken_lesions_file_before_embedding(shared_data, tmp_path, caplog):
    scan = shared_data / "cases" / "sts_002_ct" / "image.nii.gz"
    bad = tmp_path / "lesions.csv"
    bad.write_text("name;x;y\ngtv;1;2\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"baseline,followup,lesions\n{scan},{scan},{bad}\n")
    out = tmp_path / "out"
    code = main(["cohort", "track", "--pairs", str(pairs), "--out", str(out), "--strict"])
    assert code == 1  # the pair failed (recorded), nothing else to do
    assert any(str(bad) in e and "missing column(s) z" in e for e in _errors(caplog))
    assert not [f for f in out.rglob("*.parquet") if "embeddings" in f.parts]  # nothing was embedded
    from uae_ray.cohort.track import TRACK_MANIFEST
    from uae_ray.storage import Manifest

    (rec,) = Manifest(str(out / TRACK_MANIFEST)).records()
    assert rec.status == "error" and "missing column(s) z" in rec.error


def test_worker_logs_without_colour_codes_unless_on_a_terminal(monkeypatch) -> None:
    import io

    from uae_ray.cohort.runner import plain_worker_logs

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    plain_worker_logs(io.StringIO())  # a log file or a pipe
    assert os.environ["RAY_COLOR_PREFIX"] == "0"
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # the user's choice wins
    plain_worker_logs(io.StringIO())
    assert os.environ["RAY_COLOR_PREFIX"] == "1"


def test_the_driver_saves_the_manifest_while_the_job_runs(tmp_path) -> None:
    from uae_ray.cohort.embed import add_record
    from uae_ray.storage import Manifest

    manifest = Manifest(str(tmp_path / "manifests" / "embed"))
    on_result = add_record(manifest, save_every_s=0.0)  # save after every completion
    on_result({"scan_id": "a" * 16, "uri": "x.nii.gz", "status": "ok"})
    assert [r.scan_id for r in Manifest(str(tmp_path / "manifests" / "embed")).records()] == ["a" * 16]
    slow = add_record(Manifest(str(tmp_path / "m2")), save_every_s=3600.0)
    slow({"scan_id": "b" * 16, "uri": "y.nii.gz", "status": "error", "error": "bad"})
    assert not (tmp_path / "m2").exists()  # not yet: the end of the job saves it


def test_a_second_job_on_the_same_output_is_refused_while_the_first_runs(tmp_path, caplog) -> None:
    """A live lease of another job: exit 2 in one line, nothing touched; a stale one is taken over."""
    import json
    import time

    from uae_ray.cohort.lease import JobLease, LeaseHeldError

    out = tmp_path / "out"
    with JobLease(str(out), "embed", settle_s=0.0):
        with pytest.raises(LeaseHeldError, match="another `cohort embed`"):
            JobLease(str(out), "embed", settle_s=0.0).__enter__()
        code = main(["cohort", "embed", "--archive", str(tmp_path), "--out", str(out)])
        assert code == 2 and "is writing to this output" in _errors(caplog)[-1]
    assert not (out / "manifests" / "embed.lease").exists()
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    (out / "manifests" / "embed.lease").write_text(json.dumps({"token": "x", "job": "embed", "pid": 1, "host": "h",
                                                                "renewed": time.time() - 3600}))
    with caplog.at_level(logging.WARNING), JobLease(str(out), "embed", settle_s=0.0) as lease:
        assert json.loads((out / "manifests" / "embed.lease").read_text())["token"] == lease.token
    assert any("stale lease" in r.getMessage() for r in caplog.records)


def test_a_fresh_lease_of_a_process_that_died_on_this_host_is_taken_over_at_once(tmp_path, caplog) -> None:
    """A job killed with -9 leaves its lease renewed seconds ago: on the same host its dead pid
    frees it at once; a fresh lease of a live process (or of another host) still refuses."""
    import json
    import socket
    import subprocess
    import sys
    import time

    from uae_ray.cohort.lease import JobLease, LeaseHeldError

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease_file = tmp_path / "out" / "manifests" / "watch.lease"
    lease_file.parent.mkdir(parents=True)

    def held_by(pid: int, host: str) -> None:
        lease_file.write_text(json.dumps({"token": "x", "job": "watch", "pid": pid, "host": host,
                                          "renewed": time.time()}))

    held_by(int(dead.stdout), socket.gethostname())
    with caplog.at_level(logging.WARNING), JobLease(str(tmp_path / "out"), "watch", settle_s=0.0):
        pass
    assert any("stale lease" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records)
    for pid, host in ((os.getppid(), socket.gethostname()), (int(dead.stdout), "another-host")):
        held_by(pid, host)
        with pytest.raises(LeaseHeldError):
            JobLease(str(tmp_path / "out"), "watch", settle_s=0.0).__enter__()
