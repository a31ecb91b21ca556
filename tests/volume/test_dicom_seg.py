"""DICOM SEG of a label map over the real DICOM series of ../shared/data (ts_upper_abdomen)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from uae_ray.cli import main
from uae_ray.volume import VolumeError, read_image
from uae_ray.volume.colors import segment_rgb
from uae_ray.volume.dicom_seg import dicom_seg, segment_code

CASE = "ts_upper_abdomen"


@pytest.fixture(scope="module")
def series(shared_data: Path) -> Path:
    return shared_data / "dicom" / CASE


@pytest.fixture(scope="module")
def labels(shared_data: Path) -> sitk.Image:
    """Three organs of the case's labels as labels 2, 5 and 7 (gaps, as in a real organ list)."""
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "cases" / CASE / "labels.nii.gz")))
    out = np.zeros(src.shape, np.uint8)
    for new, old in ((2, 5), (5, 1), (7, 6)):  # liver, spleen, stomach
        out[src == old] = new
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(read_image(shared_data / "dicom" / CASE))
    return image


NAMES = {2: "liver", 5: "spleen", 7: "stomach", 9: "pancreas"}  # 9 is absent from the map


def _frames_in_label_order(seg, labels: sitk.Image) -> np.ndarray:
    """The SEG's combined volume as a (z, y, x) array in the label map's slice order."""
    vol = seg.get_volume(combine_segments=True, relabel=False)
    z_seg = vol.affine[2, 3] + vol.affine[2, 0] * np.arange(vol.array.shape[0])
    z_lab = np.array([labels.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(labels.GetSize()[2])])
    order = [int(np.argmin(np.abs(z_seg - z))) for z in z_lab]
    return vol.array[order]


def test_round_trip_segments_pseudonym_and_references(series, labels, tmp_path, caplog):
    import highdicom as hd

    with caplog.at_level(logging.WARNING):
        seg = dicom_seg(labels, NAMES, series, "pseudo123", "test-model-1")
    assert "derived UIDs" in caplog.text  # this de-identified export has no study/series UIDs
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    back = hd.seg.segread(path)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in back.SegmentSequence] == [(1, "liver"), (2, "spleen"),
                                                                                 (3, "stomach")]
    assert back.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    # recommended display colours (CIELab in the file), the anatomy colour of each organ, distinct
    rgb = [hd.color.CIELabColor.from_dicom_value(tuple(s.RecommendedDisplayCIELabValue)).to_rgb()
           for s in back.SegmentSequence]
    assert [tuple(int(round(v)) for v in c) for c in rgb] == [segment_rgb(n) for n in ("liver", "spleen", "stomach")]
    assert len(set(map(tuple, rgb))) == 3
    assert back.PatientName == "pseudo123" and back.PatientID == "pseudo123" and not back.get("PatientBirthDate")
    arr = sitk.GetArrayFromImage(labels)
    combined = _frames_in_label_order(back, labels)
    for number, label in ((1, 2), (2, 5), (3, 7)):
        np.testing.assert_array_equal(combined == number, arr == label)
    sources = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
               for f in series.iterdir()}
    referenced = {i.ReferencedSOPInstanceUID for s in back.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    assert referenced and referenced <= sources


def test_real_uids_are_referenced_and_patient_identity_is_dropped(series, labels, tmp_path):
    copy = tmp_path / "series"
    copy.mkdir()
    study, ser = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ser
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "SECRET-4711", "19700101"
        ds.save_as(copy / f.name)
    seg = dicom_seg(labels, NAMES, copy, "pseudo123", "test-model-1")
    out = tmp_path / "seg.dcm"
    seg.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(out)
    assert back.StudyInstanceUID == study and back.ReferencedSeriesSequence[0].SeriesInstanceUID == ser
    raw = out.read_bytes()
    assert b"SECRET-4711" not in raw and b"Doe^Jane" not in raw and b"19700101" not in raw


def test_labels_off_the_series_grid_or_empty_are_refused(series, labels):
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(np.array(labels.GetOrigin()) + [0.0, 0.0, 1.0]))
    with pytest.raises(VolumeError, match=f"{CASE}.*ImagePositionPatient"):
        dicom_seg(shifted, NAMES, series, "p", "v")
    small = labels[:, :, :10]
    with pytest.raises(VolumeError, match="size"):
        dicom_seg(small, NAMES, series, "p", "v")
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    with pytest.raises(VolumeError, match="every label is empty"):
        dicom_seg(empty, NAMES, series, "p", "v")


def test_segment_codes():
    assert segment_code("liver").meaning == "Liver"
    assert segment_code("kidney_left").meaning == "Kidney"
    assert segment_code("vertebrae_T12").meaning == "Anatomical Structure"


def test_segment_dicom_seg_needs_a_dicom_target(tmp_path, caplog):
    target = tmp_path / "scan.nii.gz"
    rc = main(["segment", "--support", "a.nii.gz:b.nii.gz", "--target", str(target), "--organs", "liver",
               "--out", str(tmp_path / "l.nii.gz"), "--dicom-seg", str(tmp_path / "s.dcm")])
    assert rc == 2
    assert "--dicom-seg needs a DICOM series folder" in caplog.text and str(target) in caplog.text
