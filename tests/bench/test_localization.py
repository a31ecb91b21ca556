"""`uae-ray bench localization`: summaries (unit), a smoke run of the curated protocol on two real
cases, and the head-neck leave-patient-out protocol on one test patient."""

import json

import pytest

from uae_ray.bench.localization import per_organ, summarize


def _rec(method, k, target, organ, iou, ml=100.0, seconds=1.0):
    return {"method": method, "k": k, "target": target, "organ": organ, "iou": iou, "wall_mm": 10 * (1 - iou),
            "found": iou > 0.3, "seconds": seconds, "volume_ml": ml}


def test_summary_rows_per_method_and_k():
    recs = [
        _rec("m", 1, "a", "liver", 0.2), _rec("m", 1, "a", "liver", 0.4),  # two subsets of k = 1
        _rec("m", 2, "a", "liver", 0.5),
        _rec("m", 1, "b", "liver", 0.6),
        _rec("m", 1, "b", "adrenal", 0.1, ml=5.0),
    ]
    rows = {(r["method"], r["k"]): r for r in summarize(recs, min_ml=20.0)}
    assert rows[("m", "1")]["n_organs"] == 3 and rows[("m", "1")]["n_organs_min_ml"] == 2
    assert rows[("m", "1")]["iou_min_ml"] == pytest.approx((0.3 + 0.6) / 2)
    assert rows[("m", "2")]["iou_min_ml"] == pytest.approx(0.5)
    assert rows[("m", "all")]["iou_min_ml"] == pytest.approx((0.5 + 0.6) / 2)  # each organ with all its supports
    assert per_organ(recs)["m"]["liver"]["iou"] == pytest.approx(0.55)


def test_bench_smoke_on_two_cases(shared_data, tmp_path, capsys):
    from uae_ray.cli import main

    out = tmp_path / "loc.json"
    code = main(["bench", "localization", "--protocol", "curated", "--data", str(shared_data), "--out", str(out),
                 "--cases", "ts_example_ct,ts_upper_abdomen", "--organs", "liver",
                 "--embedding-mode", "transfer"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["cases"] == ["ts_example_ct", "ts_upper_abdomen"]
    methods = {r["method"] for r in result["summary"]}
    assert {"embedding/transfer", "embedding/transfer/cut-extend"} <= methods
    recs = [r for r in result["records"] if r["method"] == "embedding/transfer"]
    assert sorted((r["target"], r["organ"]) for r in recs) == [("ts_example_ct", "liver"), ("ts_upper_abdomen", "liver")]
    assert all(0.0 <= r["iou"] <= 1.0 and r["wall_mm"] >= 0 and r["k"] == 1 for r in recs)
    text = capsys.readouterr().out
    assert "iou_min_ml" in text and "per organ" in text


def test_headneck_protocol_draws_supports_from_training_and_targets_from_test_patients(shared_data, tmp_path):
    from uae_ray.cli import main
    from uae_ray.split import load_split, read_case_patients

    out = tmp_path / "hn.json"
    code = main(["bench", "localization", "--data", str(shared_data), "--out", str(out), "--targets", "1",
                 "--k", "1", "--window-mm", "32"])  # coarse to fine: 5x faster than whole-scan searches
    assert code == 0
    result = json.loads(out.read_text())
    split, patients = load_split(result["split"]), read_case_patients(shared_data)
    assert result["leave_patient_out"] and len(result["supports"]) == 1 and len(result["targets"]) == 1
    assert result["window_mm"] == 32.0
    assert not split.is_test(patients[result["supports"][0]]) and split.is_test(patients[result["targets"][0]])
    (row,) = result["summary"]
    assert row["k"] == "1" and row["n_organs"] >= 4  # the structures whole in both scans
    # one support of another patient already places the boxes: a real, loose bound
    assert row["iou_all"] > 0.25, row
