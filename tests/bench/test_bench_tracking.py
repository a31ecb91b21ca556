"""`uae-ray bench tracking`: the synthetic longitudinal pairs and a smoke run on one real CT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.bench.longitudinal import is_lesion_label
from uae_ray.bench.tracking import TRACK_METHODS, tracking_stats
from tests.shared import SHARED_DATA, needs_shared_data



def test_tracking_stats():
    err = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 12.0], [1.0, 0.0, 0.0]])
    s = tracking_stats(err, np.array([10.0, 20.0, 0.5]), np.array([True, False, True]))
    assert s["n"] == 3 and s["med_mm"] == pytest.approx((5 + 12 + 1) / 3)
    assert s["cpm10_pct"] == pytest.approx(200 / 3) and s["cpm_radius_pct"] == pytest.approx(200 / 3)
    assert s["med_z_mm"] == pytest.approx(4.0) and s["abstain_pct"] == pytest.approx(100 / 3)
    assert s["found_med_mm"] == pytest.approx(3.0)
    assert tracking_stats(np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool)) == {"n": 0}


def test_lesion_label_names():
    assert all(is_lesion_label(n) for n in ("gtv", "GTV_2", "liver_tumor", "Tumour", "lesion_1"))
    assert not any(is_lesion_label(n) for n in ("liver", "ptv", "spinal_cord"))


@needs_shared_data
@pytest.mark.data
def test_follow_up_ground_truth_is_exact_and_lesions_are_real():
    from uae_ray.data.cases import load_cases
    from uae_ray.bench.longitudinal import make_pair

    case = next(c for c in load_cases(SHARED_DATA, modality="CT") if c.case_id == "pyradiomics_lung2")
    image = case.read()
    pair = make_pair(case, image, np.random.default_rng(7), points_per_case=3)
    les = pair.lesions
    assert les.kinds[0] == "tumour" and les.lesions.names[0] == "gtv" and 15 < les.lesions.radius_mm[0] < 30
    assert set(les.kinds[1:]) == {"body"} and len(les.kinds) == 4  # the case has no organ labels
    assert pair.params["breathing_mm"] != 0.0 and 0.2 < pair.params["min_jacobian"]
    # The follow-up's intensity at the true position equals the baseline's at the lesion centre
    # (up to the random intensity change and noise), far from the identity position.
    smooth_b = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 3.0)
    smooth_f = sitk.SmoothingRecursiveGaussian(sitk.Cast(pair.followup, sitk.sitkFloat32), 3.0)
    inside = np.flatnonzero(pair.inside)
    assert len(inside) >= 2
    a = [smooth_b.EvaluateAtPhysicalPoint(tuple(les.lesions.xyz[i])) for i in inside]
    b = [smooth_f.EvaluateAtPhysicalPoint(tuple(pair.truth[i])) for i in inside]
    assert np.median(np.abs(np.subtract(a, b))) < 60.0, (a, b)
    assert np.linalg.norm(pair.truth - les.lesions.xyz, axis=1).mean() > 5.0


@needs_shared_data
@pytest.mark.data
def test_bench_smoke_on_one_case(tmp_path):
    from uae_ray.bench.tracking import run_tracking, tracking_table
    from uae_ray.serving.local import LocalEmbedder

    out = tmp_path / "tracking.json"
    methods = ("nn", "fixed-point", "nn+extent")
    result = run_tracking(SHARED_DATA, LocalEmbedder(), out, seed=1, points_per_case=2, methods=methods,
                          cases=("sts_007_ct",))  # a test-side patient of the default split
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "tracking" and saved["cases"] == ["sts_007_ct"] and saved["methods"] == list(methods)
    for key in ("model_version", "machine", "per_case", "overall", "by_kind", "no_tracking", "config", "wall_s"):
        assert key in saved
    for method in methods:
        stats = saved["overall"][method]
        for key in ("n", "cpm10_pct", "cpm_radius_pct", "med_mm", "med_x_mm", "med_y_mm", "med_z_mm",
                    "median_mm", "abstain_pct", "ms_per_lesion"):
            assert math.isfinite(stats[key]), (method, key, stats)
        assert stats["n"] >= 2
    assert saved["overall"]["fixed-point"]["med_mm"] < saved["no_tracking"]["med_mm"]
    text = tracking_table(result)
    assert "uae-ray fixed-point" in text and "no tracking" in text and "tumour" in text
    assert set(methods) <= set(TRACK_METHODS)
