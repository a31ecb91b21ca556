"""Cohort manifest: load/save, skip logic, per-scan records, compaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from uae_ray.storage import objects
from uae_ray.storage.manifest import Manifest, ManifestRecord, record_uri, write_record
from uae_ray.storage.uri import join

V1, V2 = "tiny-v0+aaaa1111", "tiny-v0+bbbb2222"


def test_empty_when_absent(root: str) -> None:
    m = Manifest(join(root, "out"))
    assert len(m) == 0 and m.status("x") is None and m.done_ids(V1) == set()
    assert m.to_table().num_rows == 0


def test_save_and_reload(root: str) -> None:
    out = join(root, "out")
    m = Manifest(out)
    m.record("s1", "s3://arch/a.nii.gz", "ok", model_version=V1,
             output_uri=join(out, "embeddings", "s1.parquet"), n_bytes=123, seconds=1.5)
    m.record("s2", "s3://arch/b.nii.gz", "error", error="b.nii.gz: truncated\nfile",
             model_version=V1, seconds=0.2)
    m.record("s3", "s3://arch/c", "pending")
    assert m.save() > 0
    assert objects.exists(m.snapshot_uri)
    again = Manifest(out)
    assert again.records() == m.records()
    assert again.status("s1") == "ok" and again.status("s2") == "error"
    assert again.get("s2").error == "b.nii.gz: truncated file"  # one line
    assert again.get("s1").updated_at.tzinfo is not None
    assert again.counts() == {"ok": 1, "error": 1, "pending": 1}


def test_skip_logic(root: str) -> None:
    m = Manifest(join(root, "out"))
    m.record("done", "u1", "ok", model_version=V1)
    m.record("failed", "u2", "error", error="boom", model_version=V1)
    m.record("old_model", "u3", "ok", model_version=V2)
    m.record("pend", "u4", "pending", model_version=V1)
    m.save()
    reloaded = Manifest(join(root, "out"))
    assert reloaded.done_ids(V1) == {"done"}
    assert reloaded.done_ids(V2) == {"old_model"}
    todo = reloaded.pending(["done", "failed", "old_model", "pend", "new"], V1)
    assert todo == ["failed", "old_model", "pend", "new"]


def test_worker_records_survive_driver_crash(root: str) -> None:
    out = join(root, "out")
    driver = Manifest(out)
    driver.record("a", "ua", "ok", model_version=V1)
    driver.save()
    # Workers write their own records; the driver dies before saving the snapshot.
    write_record(out, ManifestRecord("b", "ub", "ok", model_version=V1, n_bytes=5))
    write_record(out, ManifestRecord("a", "ua", "error", error="rerun failed", model_version=V1))
    assert objects.exists(record_uri(out, "b"))
    recovered = Manifest(out)
    assert recovered.done_ids(V1) == {"b"}  # the newer record of "a" wins over the snapshot
    assert recovered.get("a").error == "rerun failed"
    recovered.save()  # compaction folds the record files into the snapshot
    assert objects.list_uris(join(out, "manifest")) == []
    final = Manifest(out)
    assert final.records() == recovered.records()


def test_compaction_keeps_records_changed_meanwhile(root: str) -> None:
    out = join(root, "out")
    write_record(out, ManifestRecord("a", "ua", "pending"))
    driver = Manifest(out)
    later = ManifestRecord("a", "ua", "ok", model_version=V1,
                           updated_at=datetime.now(UTC) + timedelta(seconds=1))
    write_record(out, later)  # a worker finishes after the driver loaded
    driver.save()
    assert objects.exists(record_uri(out, "a"))
    assert Manifest(out).get("a") == later


def test_add_keeps_newest(root: str) -> None:
    m = Manifest(join(root, "out"), load=False)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    new = ManifestRecord("a", "u", "ok", model_version=V1, updated_at=t0 + timedelta(1))
    old = ManifestRecord("a", "u", "error", error="x", updated_at=t0)
    assert m.add(new) and not m.add(old)
    assert m.status("a") == "ok"


def test_persist_writes_record_file(root: str) -> None:
    m = Manifest(join(root, "out"))
    rec = m.record("w1", "u", "ok", model_version=V1, persist=True)
    assert Manifest(join(root, "out")).get("w1") == rec


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        ManifestRecord("a", "u", "done")
    with pytest.raises(ValueError, match="safe"):
        ManifestRecord("../etc", "u", "ok")
    with pytest.raises(ValueError, match="timezone"):
        ManifestRecord("a", "u", "ok", updated_at=datetime(2024, 1, 1))
    long = ManifestRecord("a", "u", "error", error="x" * 5000)
    assert len(long.error) == 2000
    assert ManifestRecord.from_dict(json.loads(long.to_json())) == long

