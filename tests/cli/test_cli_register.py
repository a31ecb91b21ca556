"""`uae-ray register` end to end, in-process, on a real CT moved by a known transform."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.cli import build_parser, main
from tests.shared import SHARED_DATA, needs_shared_data

CASE = SHARED_DATA / "cases" / "sts_002_ct" / "image.nii.gz"


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_register_is_a_verb():
    text = build_parser().format_help()
    assert "register" in text
    args = build_parser().parse_args(["register", "--fixed", "a", "--moving", "b", "--transform", "affine",
                                      "--out", "t.tfm", "--refine"])
    assert args.transform == "affine" and args.refine and args.resampled is None


@needs_shared_data
@pytest.mark.data
def test_register_writes_a_readable_tfm_the_resampled_image_and_the_report(tmp_path, one_thread):
    fixed = sitk.ReadImage(str(CASE))
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    s = sitk.Euler3DTransform()
    s.SetCenter(tuple(centre))
    s.SetRotation(0.12, -0.08, 0.15)
    s.SetTranslation((12.0, -9.0, 6.0))  # s: moving -> fixed; the truth is its inverse
    moving_path = tmp_path / "moving.nii.gz"
    sitk.WriteImage(sitk.Resample(fixed, fixed, s, sitk.sitkLinear, -1024.0, fixed.GetPixelID()), str(moving_path))
    out, resampled, report = tmp_path / "out" / "t.tfm", tmp_path / "r.nii.gz", tmp_path / "qc.html"
    code = main(["register", "--fixed", str(CASE), "--moving", str(moving_path), "--transform", "rigid",
                 "--out", str(out), "--resampled", str(resampled), "--report", str(report)])
    assert code == 0
    tx = sitk.ReadTransform(str(out))
    truth = s.GetInverse()
    for idx in ([30, 40, 20], [80, 70, 25], [60, 100, 30]):
        p = fixed.TransformContinuousIndexToPhysicalPoint(idx)
        assert np.linalg.norm(np.subtract(tx.TransformPoint(p), truth.TransformPoint(p))) < 3.0
    moved = sitk.ReadImage(str(resampled))
    assert moved.GetSize() == fixed.GetSize() and np.allclose(moved.GetOrigin(), fixed.GetOrigin())
    html = report.read_text()
    assert html.count("data:image/png") == 12  # fixed, moving, checkerboard, overlay x 3 planes
    assert "inlier fraction" in html and "moving.nii.gz" in html
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


@needs_shared_data
def test_a_contradicting_modality_flag_is_one_line_and_exit_2(tmp_path, caplog):
    code = main(["register", "--fixed", str(CASE), "--moving", str(CASE), "--fixed-modality", "MR",
                 "--out", str(tmp_path / "t.tfm")])
    assert code == 2 and not (tmp_path / "t.tfm").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(e.startswith(f"{CASE}: modality given as MR but the image is CT") and "\n" not in e for e in errors)


def test_an_unreadable_image_is_exit_2(tmp_path, caplog):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    code = main(["register", "--fixed", str(broken), "--moving", str(broken), "--out", str(tmp_path / "t.tfm")])
    assert code == 2
    assert any(str(broken) in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
