"""The calibrated status of a mask (uae_ray.tasks.segment.status): the fit, the threshold, the
grading rule, and the shipped calibration."""

import json

import numpy as np
import pytest

from uae_ray.tasks.segment.assembly import OrganSegmentation
from uae_ray.tasks.segment.status import (FEATURES, StatusCalibration, choose_threshold, default_calibration,
                                          feature_vector, fit_calibration, fit_logistic, status_figures)


def _masks(n: int = 400, seed: int = 0):
    """Synthetic masks whose Dice rises with ``verified`` and falls with the volume error; a
    quarter are absent organs (low verified, box half out of view or not)."""
    rng = np.random.default_rng(seed)
    verified = rng.uniform(0, 1, n)
    verr = rng.uniform(0, 2, n)
    absent = rng.uniform(0, 1, n) < 0.25
    verified[absent] *= 0.3
    dice = np.clip(0.2 + 0.8 * verified - 0.25 * verr + rng.normal(0, 0.05, n), 0, 1)
    dice[absent] = 0.0
    x = np.stack([verified, rng.uniform(0.2, 0.8, n), np.where(absent & (rng.uniform(0, 1, n) < 0.5), 0.3, 1.0),
                  rng.uniform(0.5, 0.9, n), verr], axis=1)
    return x, dice, absent


def test_logistic_fit_recovers_the_direction_of_the_evidence():
    x, dice, _ = _masks()
    mean, scale, w, _ = fit_logistic(x, (dice >= 0.5).astype(float))
    assert w[FEATURES.index("verified")] > 1.0 and w[FEATURES.index("volume_error")] < -0.5
    assert np.all(scale > 0) and np.allclose(mean[0], x[:, 0].mean())


def test_fit_picks_a_threshold_that_meets_the_precision_and_absent_bounds():
    x, dice, absent = _masks()
    n = len(dice)
    cal = fit_calibration(x, dice, absent, ["ok"] * n, np.full(n, 100), {"targets": ["a"]})
    # graded as the pipeline grades: evidence figures plus a volume against the supports' (1 ml)
    graded = [cal.status("ok", {**dict(zip(FEATURES, row)), "expected_ml": 1.0}, 100, float(np.exp(row[4])))
              for row in x]
    status = np.array([s for s, _ in graded])
    ok = status == "ok"
    assert ok.any() and ((dice[ok] >= 0.5).mean() >= 0.95)
    assert (ok & absent).sum() / absent.sum() <= 0.05
    assert set(status) <= {"ok", "low_confidence", "outside_view"}
    assert cal.fitted_on["targets"] == ["a"] and cal.fitted_on["precision"] == 0.95


def test_threshold_is_one_when_no_cut_is_precise_enough():
    q = np.linspace(0, 1, 10)
    assert choose_threshold(q, np.zeros(10, bool), np.zeros(10, bool)) == 1.0


def test_grading_rule():
    cal = StatusCalibration(mean=(0.5, 0.5, 1.0, 0.7, 0.5), scale=(0.2,) * 5, weights=(3.0, 0, 0, 0, -1.0), bias=0.0,
                            ok_threshold=0.5)
    good = {"verified": 0.9, "agreement": 0.5, "fov_fraction": 1.0, "score": 0.7, "expected_ml": 10.0}
    assert cal.status("ok", good, 50, 10.0)[0] == "ok"
    assert cal.status("ok", {**good, "verified": 0.1}, 50, 10.0)[0] == "low_confidence"
    assert cal.status("ok", {**good, "fov_fraction": 0.1}, 50, 10.0)[0] == "outside_view"
    assert cal.status("outside_fov", good, 0, 0.0)[0] == "outside_view"
    assert cal.status("ok", good, 0, 0.0)[0] == "not_found"
    assert cal.status("no_support", {}, 0, 0.0)[0] == "no_support"
    assert np.isnan(feature_vector({}, 1.0)[0]) and feature_vector({"expected_ml": 10.0}, 100.0)[4] == pytest.approx(
        np.log(10.0))
    organ = OrganSegmentation("parotid", 1, "ok", "", 3, 50, 10.0, 0.1, evidence={**good, "verified": 0.1})
    result = type("R", (), {"organs": [organ]})()
    cal.grade(result)
    assert organ.status == "low_confidence" and "low confidence" in organ.message and 0 <= organ.quality < 0.5


def test_figures_and_json_round_trip(tmp_path):
    figs = status_figures(["ok", "ok", "low_confidence", "ok"], np.array([0.8, 0.3, 0.6, 0.0]),
                          np.array([False, False, False, True]))
    assert figs["ok_dice_ge_0.5_pct"] == pytest.approx(100 / 3) and figs["absent_ok_pct"] == 100.0
    assert figs["present_ok_pct"] == pytest.approx(200 / 3)
    cal = default_calibration()
    path = tmp_path / "cal.json"
    path.write_text(cal.to_json())
    assert StatusCalibration.load(path) == cal
    assert cal.fitted_on["side"] == "train" and cal.fitted_on["targets"]  # fit on training patients, recorded
    path.write_text(json.dumps({"mean": [0]}))
    with pytest.raises(ValueError, match="not a status calibration"):
        StatusCalibration.load(path)
    with pytest.raises(FileNotFoundError, match="status calibration not found"):
        StatusCalibration.load(tmp_path / "none.json")
