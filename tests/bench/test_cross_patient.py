"""Pieces of the leave-patient-out parts of ``bench accuracy`` (d, abstention) and its refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.bench.accuracy import part_cases, run_accuracy
from uae_ray.bench.cross_patient import CaseEmbeddings, abstention_stats, crop_z, head_neck, pick_templates, view_status
from uae_ray.data.cases import load_cases, whole_labels
from uae_ray.split import SplitError, load_split


def test_whole_labels_excludes_labels_on_a_face() -> None:
    lab = np.zeros((6, 6, 6), np.int16)
    lab[2:4, 2:4, 2:4] = 1  # inside
    lab[0, 3, 3] = 2  # on the first slice
    lab[3, 3, 5] = 3  # on the last column
    assert whole_labels(lab, {1: "a", 2: "b", 3: "c", 4: "absent"}) == {"a"}


def test_crop_and_view_status() -> None:
    lab = np.zeros((10, 4, 4), np.int16)
    lab[1:3] = 1  # low z only
    lab[7:9, 0] = 2  # high z only
    lab[4:7, 1] = 3  # across the middle
    image = sitk.GetImageFromArray(np.zeros_like(lab, np.float32))
    cropped, kept = crop_z(image, sitk.GetImageFromArray(lab), upper=True)
    assert cropped.GetSize()[2] == 5 and kept.shape[0] == 5
    assert cropped.GetOrigin()[2] == pytest.approx(5.0)  # same world frame
    assert view_status(lab, kept, {1: "low", 2: "high", 3: "mid"}) == {"low": "out", "high": "in", "mid": "cut"}


def test_abstention_stats_counts_out_of_view_finds_as_wrong() -> None:
    st = abstention_stats(np.array([True, True, False, True]), np.array([False, True]),
                          np.array([3.0, 15.0, np.nan, 40.0]))
    assert st["in_view_found_pct"] == 75.0 and st["out_of_view_found_pct"] == 50.0 and st["n_found"] == 4
    assert st["found_within_10mm_pct"] == 25.0 and st["found_within_20mm_pct"] == 50.0


@pytest.fixture(scope="module")
def cases(shared_data: Path):
    return load_cases(shared_data)


def test_parts_measure_test_patients_only(cases) -> None:
    split = load_split()
    chosen = part_cases(cases, split)
    for part in ("a", "b", "d", "e", "abstention"):
        assert chosen[part] and all(split.is_test(c.patient) for c in chosen[part]), part
    assert len(chosen["d"]) == 30 and len(chosen["e"]) == 8
    assert len(chosen["templates"]) == 3 and not any(split.is_test(c.patient) for c in chosen["templates"])
    assert all(c.case_id.startswith("openkbp_pt") for c in chosen["templates"])
    assert {c.case_id for c in chosen["b"]} == {"ts_aorta_cta", "ts_upper_abdomen"}


def test_bench_refuses_a_model_trained_on_a_test_patient(shared_data: Path, tmp_path: Path) -> None:
    from uae_ray.serving.local import LocalEmbedder

    out = tmp_path / "acc.json"
    with pytest.raises(SplitError, match=r"part d\) was trained on patients of the evaluation cases openkbp_pt100"):
        run_accuracy(shared_data, LocalEmbedder(), out, parts=("d", "a"), trained_on=["openkbp_pt100"])
    assert not out.exists()


@pytest.mark.slow
def test_head_neck_part_on_one_pair(cases) -> None:
    """One train template -> one test target with the shipped model: real errors, a real bound."""
    from uae_ray.serving.local import LocalEmbedder

    split = load_split()
    by_id = {c.case_id: c for c in cases}
    tpl = pick_templates([c for c in cases if not split.is_test(c.patient)], 1)
    target = [by_id["openkbp_pt112"]]
    res = head_neck(tpl, target, ("fixed-point",), ("identity",), 0, CaseEmbeddings(LocalEmbedder()))
    (row,) = res["pairs"]
    assert len(row["names"]) >= 4
    fp, ident = res["overall"]["fixed-point"], res["overall"]["identity"]
    assert fp["n"] == ident["n"] == len(row["names"])
    # Same world coordinates are ~29 mm off for this pair (~60 mm over the cohort); matching is far closer.
    assert ident["mre_mm"] > 20.0 and fp["mre_mm"] < 0.6 * ident["mre_mm"], (fp, ident)


def test_calibration_rule_grid_and_choice() -> None:
    from uae_ray.bench.calibrate import choose_rule, rule_stats

    cons = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1])
    score = np.array([0.9, 0.8, 0.8, 0.4, 0.9, 0.9])
    inside = np.array([True, True, True, True, True, False])
    in_view = np.array([True, True, True, True, False, False])
    err = np.array([2.0, 5.0, 30.0, 4.0, 0.0, 0.0])
    loose = rule_stats(cons, score, inside, in_view, err, 0.0, 0.0)
    assert loose["in_view_found_pct"] == 100.0 and loose["out_of_view_found_pct"] == 50.0
    assert loose["found_within_20mm_pct"] == 60.0  # 3 of 5 found are in view and within 20 mm
    strict = rule_stats(cons, score, inside, in_view, err, 0.7, 0.0)
    assert strict["in_view_found_pct"] == 50.0 and strict["out_of_view_found_pct"] == 0.0
    assert strict["found_within_20mm_pct"] == 100.0
    grid = [rule_stats(cons, score, inside, in_view, err, c, s) for c in (0.0, 0.5, 0.7) for s in (0.0, 0.5)]
    chosen = choose_rule(grid, min_precision=95.0, max_out_found=5.0)
    assert chosen["found_within_20mm_pct"] >= 95.0 and chosen["out_of_view_found_pct"] <= 5.0
    assert chosen["in_view_found_pct"] == 50.0 and chosen["min_consistent"] == 0.7


def test_tracking_and_registration_benches_refuse_seen_patients(shared_data: Path, tmp_path: Path) -> None:
    from uae_ray.bench.registration import run_registration
    from uae_ray.bench.tracking import run_tracking
    from uae_ray.serving.local import LocalEmbedder

    emb = LocalEmbedder()
    with pytest.raises(SplitError, match="sts_007_ct"):
        run_tracking(shared_data, emb, tmp_path / "t.json", cases=("sts_007_ct",), trained_on=["sts_007_mr_t1"])
    with pytest.raises(SplitError, match="CT-MR model"):
        run_registration(shared_data, emb, tmp_path / "r.json", ctmr_embedder=emb, cases=("sts_007_ct",),
                         trained_on={"ct_ct": [], "ct_mr": ["sts_007_ct"]})
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "r.json").exists()
