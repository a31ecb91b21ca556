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
