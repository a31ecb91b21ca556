"""Scan pairs for the pairwise cohort jobs: from a CSV or from an archive (patient + study date)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from uae_ray.cohort.pairs import PairsError, ScanPair, load_pairs, pair_key, scan_key
from uae_ray.storage import scan_id_for


def test_csv_pairs_resolve_relative_entries_and_keep_other_columns(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("baseline,followup,lesions\na/1.nii.gz,a/2.nii.gz,a/l.csv\n/abs/b1.nrrd,s3://bkt/b2.nii.gz,\n")
    pairs = load_pairs(str(csv), "baseline", "followup")
    assert [p.first for p in pairs] == [str(tmp_path / "a" / "1.nii.gz"), "/abs/b1.nrrd"]
    assert pairs[1].second == "s3://bkt/b2.nii.gz"
    assert pairs[0].columns == {"lesions": "a/l.csv"} and pairs[0].column_uri("lesions") == str(tmp_path / "a/l.csv")
    assert pairs[1].column_uri("lesions") is None
    # relative to the archive when one is given; ids are then the archive's scan ids
    archive = tmp_path / "archive"
    (p,) = load_pairs(str(csv), "baseline", "followup", str(archive))[:1]
    assert p.first == str(archive / "a" / "1.nii.gz")
    assert p.first_id == scan_id_for(p.first, archive) and p.second_id == scan_id_for(p.second, archive)
    assert p.pair_id == pair_key(p.first_id, p.second_id) and len(p.pair_id) == 16
    again = load_pairs(str(csv), "baseline", "followup", str(archive))[0]
    assert again.pair_id == p.pair_id  # stable
    assert p.scan_id == p.pair_id and " -> " in p.uri


def test_registration_columns_work_too(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("fixed,moving,transform\nf.nii.gz,m.nii.gz,affine\n")
    (p,) = load_pairs(str(csv), "fixed", "moving")
    assert isinstance(p, ScanPair) and p.columns == {"transform": "affine"}
    assert ScanPair("x", "/a", "/b", {}).first_id == scan_key("/a", None)  # the plain constructor works


@pytest.mark.parametrize(
    "text, cause",
    [
        ("baseline,lesions\na,b\n", "missing column(s) followup"),
        ("baseline,followup\na,\n", "row 2 has an empty followup"),
        ("baseline,followup\na,b\na,b\n", "row 3 repeats the pair of row 2"),
        ("baseline,followup\n", "no pairs (no rows)"),
    ],
)
def test_bad_pairs_csv_names_the_file_and_cause(tmp_path, text, cause):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(PairsError) as e:
        load_pairs(str(csv), "baseline", "followup")
    assert str(e.value).startswith(str(csv)) and cause in str(e.value) and "\n" not in str(e.value)


def test_no_source_and_missing_file(tmp_path):
    with pytest.raises(PairsError, match="give a pairs CSV or an archive"):
        load_pairs(None, "baseline", "followup")
    with pytest.raises(PairsError, match="cannot read pairs file"):
        load_pairs(str(tmp_path / "nope.csv"), "baseline", "followup")


def _scan(folder: Path, source: Path, meta: dict | None) -> None:
    folder.mkdir(parents=True)
    os.symlink(source, folder / "image.nii.gz")
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))


def test_archive_pairs_by_patient_and_study_date(tmp_path, shared_data):
    image = shared_data / "cases" / "sts_002_ct" / "image.nii.gz"
    archive = tmp_path / "archive"
    _scan(archive / "x3", image, {"patient": "Doe^Jane", "study_date": "20210105"})
    _scan(archive / "x1", image, {"patient": "Doe^Jane", "study_date": "20190301"})
    _scan(archive / "x2", image, {"patient": "Doe^Jane", "study_date": "20200704"})
    _scan(archive / "y1", image, {"patient": "Roe^Rick", "study_date": "20200101"})  # one scan: no pair
    _scan(archive / "z1", image, None)  # no patient: left out
    pairs = load_pairs(None, "baseline", "followup", str(archive))
    assert [(Path(p.first).parent.name, Path(p.second).parent.name) for p in pairs] == [("x1", "x2"), ("x2", "x3")]
    assert all(p.first_id == scan_id_for(p.first, archive) for p in pairs)
    assert not any("Doe" in repr(p) for p in pairs)  # patient ids are hashed away


def test_archive_pairs_read_the_dicom_study_date(tmp_path, shared_data):
    series = shared_data / "dicom" / "ts_upper_abdomen"
    archive = tmp_path / "archive"
    (archive / "later").mkdir(parents=True)
    for f in series.iterdir():
        os.symlink(f, archive / "later" / f.name)
    # the shared series is anonymised (empty PatientID): its patient comes from a meta.json in the folder
    (archive / "later" / "meta.json").write_text(json.dumps({"patient": "p86266023"}))
    _scan(archive / "early", shared_data / "cases" / "ts_upper_abdomen" / "image.nii.gz",
          {"patient": "p86266023", "study_date": "20200101"})
    (p,) = load_pairs(None, "fixed", "moving", str(archive))
    assert Path(p.first).parent.name == "early" and Path(p.second).name == "later"  # DICOM StudyDate 20221208


def test_archive_without_pairs_is_an_error(tmp_path, shared_data):
    archive = tmp_path / "archive"
    _scan(archive / "a", shared_data / "cases" / "sts_002_ct" / "image.nii.gz", {"patient": "p1"})
    with pytest.raises(PairsError, match="no pairs"):
        load_pairs(None, "baseline", "followup", str(archive))
