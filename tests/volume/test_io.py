"""Tests of uae_ray.volume.io: file formats, DICOM series, unreadable files, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.volume import Grid, VolumeError, detect_modality, read_image, read_labels
from uae_ray.volume.io import itk_error_summary

from .helpers import make_image, random_ct, require_data, rotation_direction, write_dicom_series

GEOMETRY = dict(
    spacing=(0.8, 0.9, 2.5), origin=(-100.0, 50.5, 12.0), direction=rotation_direction()
)


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


@pytest.mark.parametrize("ext", ["nii", "nii.gz", "nrrd", "mha", "mhd"])
def test_formats_round_trip(tmp_path, ext):
    image = random_ct(**GEOMETRY)
    path = tmp_path / f"ct.{ext}"
    sitk.WriteImage(image, str(path), useCompression=ext != "nii")
    out = read_image(path)
    assert out.GetPixelID() == sitk.sitkInt16  # stored pixel type is kept
    assert np.array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(image))
    g_in, g_out = Grid.from_image(image), Grid.from_image(out)
    assert g_in.size == g_out.size
    assert np.allclose(g_in.spacing, g_out.spacing, atol=1e-5)
    assert np.allclose(g_in.origin, g_out.origin, atol=1e-4)
    assert np.allclose(g_in.direction, g_out.direction, atol=1e-5)


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha"])
def test_truncated_file(tmp_path, ext):
    good = tmp_path / f"good.{ext}"
    sitk.WriteImage(random_ct((20, 30, 40)), str(good), useCompression=ext != "nii")
    data = good.read_bytes()
    bad = tmp_path / f"truncated.{ext}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VolumeError) as excinfo:
        read_image(bad)
    msg = assert_one_line_error(excinfo, bad)
    assert "ITK ERROR" not in msg and "0x" not in msg


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all " * 20)
    with pytest.raises(VolumeError) as excinfo:
        read_image(garbage)
    assert_one_line_error(excinfo, garbage)
    weird = tmp_path / "image.xyz"
    weird.write_bytes(b"\x00\x01" * 50)
    with pytest.raises(VolumeError) as excinfo:
        read_image(weird)
    assert_one_line_error(excinfo, weird, "Unable to determine ImageIO reader")
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(VolumeError) as excinfo:
        read_image(missing)
    assert_one_line_error(excinfo, missing, "no such file")
    empty = tmp_path / "zero.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(VolumeError) as excinfo:
        read_image(empty)
    assert_one_line_error(excinfo, empty, "empty file (0 bytes)")


def test_a_single_voxel_is_named_as_such(tmp_path):
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(make_image(np.zeros((1, 1, 1), np.int16)), str(path))
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "a single voxel (size 1x1x1)")


def test_s3_uri_is_not_read_here():
    with pytest.raises(
        VolumeError, match=r"^s3://bucket/ct.nii.gz: s3:// URIs are fetched by uae_ray.storage"
    ):
        read_image("s3://bucket/ct.nii.gz")


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.arange(100, dtype=np.int16).reshape(10, 10)), str(path)
    )
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "2D image")


def test_4d_image(tmp_path):
    path = tmp_path / "fmri.nii.gz"
    arr = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(3, 6, 5, 4)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr]), str(path))
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "4D image")


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.rand(4, 5, 6, 3).astype(np.float32), isVector=True),
        str(path),
    )
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "multi-component")


def test_empty_image(tmp_path):
    path = tmp_path / "empty.mha"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 0\nElementType = MET_SHORT\n"
        "ElementDataFile = LOCAL\n"
    )
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "empty image")


def test_constant_image(tmp_path):
    path = tmp_path / "const.nii.gz"
    sitk.WriteImage(make_image(np.full((5, 6, 7), -1000, np.int16)), str(path))
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "constant image", "-1000")
    assert read_image(path, validate=False).GetSize() == (7, 6, 5)


@pytest.mark.parametrize("spacing", [(0.01, 1.0, 1.0), (1.0, 1.0, 100.0)])
def test_absurd_spacing(tmp_path, spacing):
    path = tmp_path / "spacing.nii.gz"
    sitk.WriteImage(random_ct(spacing=spacing), str(path))
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "absurd voxel spacing")


def test_non_orthonormal_direction(tmp_path):
    path = tmp_path / "skew.mha"  # MetaImage keeps the matrix as written (NIfTI would coerce it)
    sitk.WriteImage(random_ct(direction=(1, 0, 0, 0, 2, 0, 0, 0, 1)), str(path))
    with pytest.raises(VolumeError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, path, "not orthonormal")


# -- DICOM -------------------------------------------------------------------------------------


DICOM_GEOMETRY = dict(
    spacing=(0.75, 0.75, 2.0),
    origin=(-30.0, -20.0, 100.0),
    direction=rotation_direction(0.0, 0.0, 0.3),
)


def test_dicom_series_reads_geometry_pixels_and_modality(tmp_path):
    image = random_ct((6, 16, 18), **DICOM_GEOMETRY)
    write_dicom_series(tmp_path / "s", image, "1.2.826.0.1.3680043.2.1125.1", modality="CT")
    out = read_image(tmp_path / "s")
    assert np.array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(image))
    assert np.allclose(out.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetDirection(), image.GetDirection(), atol=1e-5)
    assert out.GetMetaData("0008|0060").strip() == "CT"
    assert detect_modality(out, "s") == "CT"


def test_dicom_folder_with_two_series(tmp_path):
    folder = tmp_path / "mixed"
    uid_a, uid_b = "1.2.826.0.1.3680043.2.1125.11", "1.2.826.0.1.3680043.2.1125.22"
    write_dicom_series(folder, random_ct((5, 8, 8), seed=1, **DICOM_GEOMETRY), uid_a, prefix="a")
    write_dicom_series(
        folder, random_ct((7, 8, 8), seed=2, **DICOM_GEOMETRY), uid_b, "MR", prefix="b"
    )
    with pytest.raises(VolumeError) as excinfo:
        read_image(folder)
    assert_one_line_error(
        excinfo, folder, "2 DICOM series", f"{uid_a} (5 files)", f"{uid_b} (7 files)"
    )
    picked = read_image(folder, series_uid=uid_b)
    assert picked.GetSize()[2] == 7 and detect_modality(picked, "b") == "MR"
    with pytest.raises(VolumeError) as excinfo:
        read_image(folder, series_uid="1.2.3")
    assert_one_line_error(excinfo, folder, "series 1.2.3 not found", uid_a, uid_b)


def test_dicom_series_with_missing_slice(tmp_path):
    folder = tmp_path / "gap"
    write_dicom_series(
        folder, random_ct((8, 8, 8), **DICOM_GEOMETRY), "1.2.826.0.1.3680043.2.1125.3", skip=(4,)
    )
    with pytest.raises(VolumeError) as excinfo:
        read_image(folder)
    assert_one_line_error(
        excinfo, folder, "not uniformly spaced", "gap of 4.000 mm", "median gap 2.000 mm"
    )


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError) as excinfo:
        read_image(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "no DICOM series")


def test_real_dicom_series_matches_nifti():
    folder = require_data("dicom", "ts_upper_abdomen")
    nifti = read_image(require_data("cases", "ts_upper_abdomen", "image.nii.gz"))
    dicom = read_image(folder)
    assert dicom.GetSize() == nifti.GetSize() == (512, 512, 20)
    assert np.array_equal(sitk.GetArrayViewFromImage(dicom), sitk.GetArrayViewFromImage(nifti))
    assert np.allclose(dicom.GetOrigin(), nifti.GetOrigin(), atol=1e-4)
    assert np.allclose(dicom.GetSpacing(), nifti.GetSpacing(), atol=1e-5)
    assert np.allclose(dicom.GetDirection(), nifti.GetDirection(), atol=1e-6)
    assert dicom.GetMetaData("0008|0060").strip() == "CT"


# -- labels ------------------------------------------------------------------------------------


def test_read_labels_integer_and_integral_float(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint8)
    arr[1:3, 2:4, 3:5] = 3
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(make_image(arr), str(path))
    assert np.array_equal(sitk.GetArrayViewFromImage(read_labels(path)), arr)
    fpath = tmp_path / "labels_float.nii.gz"
    sitk.WriteImage(make_image(arr.astype(np.float32)), str(fpath))
    out = read_labels(fpath)
    assert out.GetPixelID() == sitk.sitkInt32
    assert np.array_equal(sitk.GetArrayViewFromImage(out), arr)
    empty = (
        tmp_path / "background.nii.gz"
    )  # all background is allowed (warning), not constant-error
    sitk.WriteImage(make_image(np.zeros((4, 4, 4), np.uint8)), str(empty))
    assert read_labels(empty).GetSize() == (4, 4, 4)


def test_read_labels_errors(tmp_path):
    frac = tmp_path / "frac.nii.gz"
    sitk.WriteImage(make_image(np.full((4, 4, 4), 0.5, np.float32)), str(frac))
    with pytest.raises(VolumeError) as excinfo:
        read_labels(frac)
    assert_one_line_error(excinfo, frac, "must hold integers")
    neg = tmp_path / "neg.nii.gz"
    sitk.WriteImage(make_image(np.full((4, 4, 4), -2, np.int16)), str(neg))
    with pytest.raises(VolumeError) as excinfo:
        read_labels(neg)
    assert_one_line_error(excinfo, neg, "negative labels")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 4), np.uint8)), str(flat))
    with pytest.raises(VolumeError) as excinfo:
        read_labels(flat)
    assert_one_line_error(excinfo, flat, "2D image")


def test_read_real_labels_on_image_grid():
    labels = read_labels(require_data("cases", "ts_example_ct", "labels.nii.gz"))
    image = read_image(require_data("cases", "ts_example_ct", "image.nii.gz"))
    assert Grid.from_image(labels) == Grid.from_image(image)
    assert 5 in np.unique(sitk.GetArrayViewFromImage(labels))  # liver


# -- message condensing ----------------------------------------------------------------------


def test_itk_error_summary_keeps_cause_only():
    exc = RuntimeError(
        "Exception thrown in SimpleITK ImageFileReader_Execute: /x/itkNrrdImageIO.cxx:771:\n"
        "ITK ERROR: NrrdImageIO(0x55d45b0bb2b0): Read: Error reading tb.nrrd:\n"
        '[nrrd] nrrdLoad: trouble reading "tb.nrrd"\n'
        "[nrrd] _nrrdEncodingGzip_read: expected 120000 bytes but received 79918\n"
    )
    assert itk_error_summary(exc) == (
        "Read: Error reading tb.nrrd: "
        "_nrrdEncodingGzip_read: expected 120000 bytes but received 79918"
    )
    assert itk_error_summary(RuntimeError("")) == "RuntimeError"
    assert len(itk_error_summary(RuntimeError("ERROR: " + "x" * 1000))) == 300
