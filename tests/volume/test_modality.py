"""Tests of uae_ray.volume.modality: explicit flag, DICOM tag, intensity heuristic, real cases."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.volume import VolumeError, detect_modality, parse_modality, read_image
from uae_ray.volume.modality import modality_from_intensities

from .helpers import make_image, manifest, random_ct, require_data

_MAX_CASE_BYTES = 5_000_000  # keep the real-data test fast: skip the large images


def _mr_like() -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 20, size=(8, 10, 12)).astype(np.int16)
    arr[2:6, 2:8, 2:10] += 600
    return arr


def test_parse_modality():
    assert parse_modality(" ct ", "x") == "CT"
    assert parse_modality("Mr", "x") == "MR"
    with pytest.raises(VolumeError, match=r"^x: unknown modality 'PET'"):
        parse_modality("PET", "x")


def test_explicit_flag_wins_over_tag_and_intensities():
    image = random_ct()
    image.SetMetaData("0008|0060", "CT")
    assert detect_modality(image, "a", explicit="mr") == "MR"
    with pytest.raises(VolumeError, match="^a: unknown modality"):
        detect_modality(image, "a", explicit="MRI-T1")


def test_dicom_tag_beats_heuristic():
    image = make_image(_mr_like())
    image.SetMetaData("0008|0060", "CT ")
    assert detect_modality(image, "a") == "CT"
    other = random_ct()
    other.SetMetaData("0008|0060", "PT")  # neither CT nor MR: fall back to intensities
    assert detect_modality(other, "a") == "CT"


def test_heuristic():
    assert detect_modality(random_ct(), "a") == "CT"
    assert detect_modality(make_image(_mr_like()), "a") == "MR"
    # a few strongly negative voxels (filter ringing) do not make an MR a CT
    arr = _mr_like()
    arr[0, 0, 0] = -1000
    assert modality_from_intensities(arr) == "MR"
    assert modality_from_intensities(np.array([])) == "MR"


def test_real_cases_by_manifest():
    rows = [
        r
        for r in manifest()
        if require_data(r["path"], "image.nii.gz").stat().st_size <= _MAX_CASE_BYTES
    ]
    assert {r["modality"] for r in rows} == {"CT", "MR"}
    for row in rows:
        path = require_data(row["path"], "image.nii.gz")
        assert detect_modality(read_image(path), str(path)) == row["modality"], row["case_id"]


def test_unshifted_ct_is_mr_with_a_warning_that_names_the_file(caplog):
    """A real CT stored as 0..4095 (no -1024 offset) is ambiguous: taken as MR, loudly."""
    ct = sitk.ReadImage(str(require_data("cases", "ts_example_ct", "image.nii.gz")))
    shifted = sitk.Cast(sitk.Clamp(ct, lowerBound=-1024, upperBound=3071) + 1024, sitk.sitkInt16)
    with caplog.at_level(logging.INFO, logger="uae_ray.volume.modality"):
        assert detect_modality(shifted, "shifted.nii.gz") == "MR"
        assert detect_modality(ct, "real.nii.gz") == "CT"
        assert detect_modality(shifted, "forced.nii.gz", "CT") == "CT"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and warnings[0].startswith("shifted.nii.gz: ") and "--modality CT" in warnings[0]
    assert warnings[1].startswith("forced.nii.gz: ") and "offset" in warnings[1]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("real.nii.gz: modality CT from intensities") for m in infos)


def test_a_real_mr_gets_no_warning(caplog):
    mr = sitk.ReadImage(str(require_data("cases", "sts_002_mr_t1", "image.nii.gz")))
    with caplog.at_level(logging.INFO, logger="uae_ray.volume.modality"):
        assert detect_modality(mr, "mr.nii.gz") == "MR"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("modality MR from intensities" in r.getMessage() for r in caplog.records)
