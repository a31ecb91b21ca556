"""The shipped leave-patient-out split and the refusal of seen patients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uae_ray.split import DEFAULT_SPLIT, PatientSplit, SplitError, check_unseen, draw_split, load_split, read_case_patients


def test_shipped_split_loads_and_names_patients() -> None:
    split = load_split()
    assert split.name == DEFAULT_SPLIT
    assert len(split.test_patients) == 36  # 30 head-neck + 4 CT-MR pairs + 2 earlier patients
    assert all(p.startswith("p") for p in split.test_patients)
    assert "openkbp" in split.rule


def test_unknown_split_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="no such split.*patients-v1"):
        load_split("patients-v0")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(SplitError, match="not a split file"):
        load_split(bad)


def test_sides_are_disjoint_by_patient(shared_data: Path) -> None:
    cp = read_case_patients(shared_data)
    split = load_split()
    train, test = split.cases(cp, "train"), split.cases(cp, "test")
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(cp)
    assert {cp[c] for c in train}.isdisjoint({cp[c] for c in test})
    assert sum(c.startswith("openkbp_") for c in test) == 30
    assert sum(c.startswith("sts_") for c in test) == 8  # 4 patients, CT and MR each
    assert {"ts_upper_abdomen", "ts_aorta_cta"} <= set(test)
    # Both scans of a CT-MR patient are on one side.
    for c in test:
        if c.endswith("_mr_t1"):
            assert c.replace("_mr_t1", "_ct") in test


def test_shipped_file_is_what_the_rule_draws(shared_data: Path) -> None:
    cp = read_case_patients(shared_data)
    doc = draw_split(cp)
    assert frozenset(doc["test_patients"]) == load_split().test_patients


def test_check_unseen_refuses_a_seen_test_patient() -> None:
    cp = {"a_ct": "p1", "a_mr": "p1", "b": "p2"}
    check_unseen(["b"], ["a_ct", "a_mr"], cp)  # fine
    with pytest.raises(SplitError, match="m1 was trained on patients of the evaluation cases a_mr"):
        check_unseen(["a_ct"], ["a_mr", "b"], cp, "m1")  # same patient, other scan


def test_split_side_must_be_known() -> None:
    with pytest.raises(SplitError, match="train, test or all"):
        PatientSplit("x", frozenset()).cases({}, "val")


def test_shipped_leave_patient_out_model_saw_no_test_patient(shared_data: Path) -> None:
    from uae_ray.models import read_checkpoint, resolve_checkpoint

    meta = read_checkpoint(resolve_checkpoint("tiny-lpo-a"))["meta"]
    cp = read_case_patients(shared_data)
    assert meta["split"] == DEFAULT_SPLIT
    assert set(meta["trained_on"]) == set(load_split().cases(cp, "train"))
    check_unseen(meta["trained_on"], load_split().cases(cp, "test"), cp, "tiny-lpo-a")  # does not raise
    # The earlier default saw two of the test patients: the benchmarks refuse it on them.
    v3 = read_checkpoint(resolve_checkpoint("tiny-uae-v3"))["meta"]["trained_on"]
    with pytest.raises(SplitError, match="ts_aorta_cta, ts_upper_abdomen"):
        check_unseen(v3, load_split().cases(cp, "test"), cp, "tiny-uae-v3")
