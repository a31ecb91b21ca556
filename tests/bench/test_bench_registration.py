"""`uae-ray bench registration` smoke run on one real CT, and its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.bench.registration import ANGLE_BINS, TRANSLATION_BINS, draw_trials, make_moving
from tests.shared import SHARED_DATA

CASE = "sts_007_ct"  # a test-side patient of the default split


def test_trials_cover_every_bin_and_are_seeded():
    image = sitk.Image([40, 40, 30], sitk.sitkInt16)
    image.SetSpacing((2.0, 2.0, 3.0))
    first = draw_trials(image, np.random.default_rng([0, 1]), ct_ct=True)
    again = draw_trials(image, np.random.default_rng([0, 1]), ct_ct=True)
    assert [t.kind for t in first] == ["rigid", "rigid", "rigid", "affine", "crop"]
    assert [t.s.GetParameters() for t in first] == [t.s.GetParameters() for t in again]
    rigid = first[:3]
    for (lo, hi), t in zip(TRANSLATION_BINS, rigid):
        assert lo <= t.translation_mm <= hi
    angle_bins = [next(i for i, (lo, hi) in enumerate(ANGLE_BINS) if lo <= t.angle_deg <= hi) for t in rigid]
    assert sorted(angle_bins) == [0, 1, 2]
    crop = make_moving(image, first[4], "CT")
    assert np.prod(crop.GetSize()) < np.prod(image.GetSize())


@pytest.mark.data
def test_bench_registration_smoke_on_one_case(tmp_path):
    if not (SHARED_DATA / "cases" / CASE / "image.nii.gz").is_file():
        pytest.skip("../shared/data not found")
    import torch

    from uae_ray.bench.registration import registration_table, run_registration
    from uae_ray.serving import get_embedder

    threads = torch.get_num_threads()
    try:
        result = run_registration(SHARED_DATA, get_embedder(None), tmp_path / "r.json", cases=(CASE,), max_trials=1,
                                  n_points=30)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["ct_ct"]["overall"].keys() == result["ct_ct"]["overall"].keys()
    overall = result["ct_ct"]["overall"]
    assert set(overall) == {"ours_rigid", "ours_affine", "ours_rigid_refine", "ours_affine_refine",
                            "mi_rigid_identity", "mi_affine_identity", "mi_rigid_centres", "mi_affine_centres"}
    assert overall["ours_rigid"]["n"] == 1 and overall["ours_rigid"]["success_pct"] == 100.0
    assert overall["ours_rigid"]["median_tre_mm"] < 3.0
    assert overall["ours_rigid"]["median_seconds_stored"] < overall["ours_rigid"]["median_seconds"]
    assert "ct_mr" not in result
    assert "uae-ray rigid" in registration_table(result)
