"""Listing and preparing the real CT training cases (skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from uae_ray.train.data import list_cases, prepare_train_volume


def test_list_cases_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list_cases(tmp_path)


@pytest.mark.data
def test_list_and_prepare_ct(shared_data: Path) -> None:
    cases = list_cases(shared_data)
    assert cases and all(p.is_file() for _, p in cases)
    assert not any(cid.endswith("_mr_t1") for cid, _ in cases)
    by_id = dict(cases)
    assert "sts_002_ct" in by_id and "ts_example_ct" in by_id
    vol = prepare_train_volume("sts_002_ct", by_id["sts_002_ct"])
    assert vol.data.shape[0] == 2 and float(vol.data[0].min()) >= 0.0
    assert len(vol.centres) > 100


@pytest.mark.data
@pytest.mark.stack
def test_training_scans_read_from_object_storage(shared_data: Path, s3_env, monkeypatch, tmp_path: Path) -> None:
    """An s3:// data prefix (manifest + case images) trains exactly like the local folder."""
    import torch

    from uae_ray.storage import ensure_bucket, upload_file, write_bytes_atomic
    from uae_ray.train.data import fetch_data, load_volumes

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    root = "s3://train-data-test/curated"
    ensure_bucket(root)
    lines = (shared_data / "manifest.csv").read_text().splitlines()
    keep = [lines[0]] + [row for row in lines[1:] if row.startswith("sts_002")]
    write_bytes_atomic(f"{root}/manifest.csv", ("\n".join(keep) + "\n").encode())
    for row in keep[1:]:
        case = row.split(",")[0]
        upload_file(shared_data / "cases" / case / "image.nii.gz", f"{root}/cases/{case}/image.nii.gz")
    cache = fetch_data(root, tmp_path / "cache")
    assert (cache / "cases" / "sts_002_mr_t1" / "image.nii.gz").is_file()
    remote = load_volumes(root, ("CT", "MR"))
    local = load_volumes(shared_data, ("CT", "MR"), case_ids=[v.case_id for v in remote])
    assert [v.case_id for v in remote] == ["sts_002_ct", "sts_002_mr_t1"]
    for r, l in zip(remote, local):
        assert r.modality == l.modality and r.patient == l.patient and torch.equal(r.data, l.data)
