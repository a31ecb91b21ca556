"""Scan discovery and image reading behind local paths and s3:// URIs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.storage import objects
from uae_ray.storage.images import (
    ScanRef,
    _is_dicom_candidate,
    discover_scans,
    is_label_name,
    read_image_uri,
    read_labels_uri,
    scan_id_for,
)
from uae_ray.storage.uri import join, uri_hash
from uae_ray.volume import VolumeError

# Scans of the archive built below, by path relative to the archive root.
EXPECTED = {
    "case1/image.nii.gz": "file",
    "case2/scan.nrrd": "file",
    "case3/vol.mhd": "file",
    "case4/ct.mha": "file",
    "dicom/series_bare": "dicom",
    "dicom/series_dcm": "dicom",
    "top.nii": "file",
}


def tiny_ct(seed: int = 0, shape_zyx=(6, 7, 8)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=shape_zyx).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    return image


def write_dicom(folder: Path, image: sitk.Image, uid: str, bare: bool) -> None:
    """One DICOM file per slice; ``bare``: UID-style names without a real suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        sl = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": uid + ".0", "0020|000e": uid,
                "0008|0018": f"{uid}.{k + 1}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": "\\".join(f"{v:.6f}" for v in
                                       image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0013": str(k + 1)}
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        path = folder / f"slice{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        if bare:
            path.rename(folder / f"CT.{uid}.{k + 1}")


def build_archive(root: Path) -> Path:
    """A small archive: images by suffix, label maps, MHD+raw, two DICOM folders, clutter."""
    for rel, seed in (("case1/image.nii.gz", 1), ("case2/scan.nrrd", 2), ("case4/ct.mha", 4),
                      ("top.nii", 5)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(tiny_ct(seed), str(path))
    labels = sitk.Cast(tiny_ct(1) > 0, sitk.sitkUInt8)
    for rel in ("case1/labels.nii.gz", "case2/scan_seg.nii.gz", "case4/body_mask.nii.gz"):
        sitk.WriteImage(labels, str(root / rel))
    (root / "case3").mkdir()
    sitk.WriteImage(tiny_ct(3), str(root / "case3" / "vol.mhd"))  # writes vol.raw beside it
    write_dicom(root / "dicom" / "series_dcm", tiny_ct(6), "1.2.826.0.1.3680043.2.1125.6", False)
    write_dicom(root / "dicom" / "series_bare", tiny_ct(7), "1.2.826.0.1.3680043.2.1125.7", True)
    (root / "case1" / "meta.json").write_text("{}")
    (root / "docs").mkdir()
    (root / "docs" / "README").write_text("not a DICOM file")
    (root / "docs" / "LICENSE").write_text("neither")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_archive(tmp_path_factory.mktemp("arch") / "archive")


def upload_tree(local: Path, uri: str) -> None:
    for base, _, files in os.walk(local):
        for name in files:
            path = Path(base) / name
            objects.upload_file(str(path), join(uri, *path.relative_to(local).parts))


def rel_kinds(refs: list[ScanRef], root: str) -> dict[str, str]:
    root = root.rstrip("/")
    return {r.uri[len(root) + 1 :]: r.kind for r in refs}


def test_naming_rules() -> None:
    assert is_label_name("labels.nii.gz") and is_label_name("Liver_SEG.nrrd")
    assert is_label_name("body_mask.nii.gz") and not is_label_name("image.nii.gz")
    assert _is_dicom_candidate("CT.1.3.12.2.1107.5.1.4.60064.300000") == (False, True)
    assert _is_dicom_candidate("IM0001") == (False, True)
    assert _is_dicom_candidate("x.DCM") == (True, False)
    assert _is_dicom_candidate("notes.txt") == (False, False)
    assert _is_dicom_candidate(".hidden") == (False, False)


def test_discover_local(archive: Path) -> None:
    refs = discover_scans(str(archive))
    assert rel_kinds(refs, str(archive)) == EXPECTED
    for ref in refs:
        rel = os.path.relpath(ref.uri, archive).replace(os.sep, "/")
        assert ref.scan_id == uri_hash(rel) == scan_id_for(ref.uri, archive)
        assert len(ref.scan_id) == 16 and int(ref.scan_id, 16) >= 0
    assert [r.uri for r in refs] == sorted(r.uri for r in refs)


def test_scan_ids_independent_of_location(archive: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "mounted"
    shutil.copytree(archive, copy)
    a = [r.scan_id for r in discover_scans(str(archive))]
    b = [r.scan_id for r in discover_scans(str(copy) + "/")]
    old = os.getcwd()
    try:
        os.chdir(copy.parent)
        c = [r.scan_id for r in discover_scans("mounted")]  # relative path to the archive
    finally:
        os.chdir(old)
    assert a == b == c and len(set(a)) == len(a)


def test_discover_and_read_s3(archive: Path, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/archives/site-a"
    upload_tree(archive, uri)
    refs = discover_scans(uri + "/")
    assert rel_kinds(refs, uri) == EXPECTED
    local_ids = {r.scan_id for r in discover_scans(str(archive))}
    assert {r.scan_id for r in refs} == local_ids  # same archive, same ids, local or S3
    by_rel = {r.uri[len(uri) + 1 :]: r for r in refs}
    for rel in EXPECTED:
        remote = read_image_uri(by_rel[rel].uri)
        here = read_image_uri(str(archive / rel))
        assert np.array_equal(sitk.GetArrayViewFromImage(remote), sitk.GetArrayViewFromImage(here))
        assert remote.GetSpacing() == pytest.approx(here.GetSpacing())
        assert remote.GetOrigin() == pytest.approx(here.GetOrigin())
    expected = sitk.GetArrayFromImage(tiny_ct(7))
    assert np.array_equal(sitk.GetArrayFromImage(read_image_uri(by_rel["dicom/series_bare"].uri)),
                          expected)
    labels = read_labels_uri(f"{uri}/case1/labels.nii.gz")
    assert labels.GetSize() == (8, 7, 6)


def test_s3_errors_name_the_uri(s3_bucket: str, archive: Path) -> None:
    good = (archive / "case1" / "image.nii.gz").read_bytes()
    bad = f"{s3_bucket}/broken/scan.nii.gz"
    objects.write_bytes_atomic(bad, good[: len(good) // 2])
    with pytest.raises(VolumeError) as info:
        read_image_uri(bad)
    message = str(info.value)
    assert message.startswith(bad + ": ") and "uae-ray-img-" not in message
    missing = f"{s3_bucket}/nothing/here.nii.gz"
    with pytest.raises(VolumeError, match="no such object"):
        read_image_uri(missing)
    not_dicom = f"{s3_bucket}/junkdir"
    objects.write_bytes_atomic(f"{not_dicom}/README", b"hello")
    with pytest.raises(VolumeError) as info:
        read_image_uri(not_dicom)
    assert str(info.value).startswith(not_dicom + ": ") and "uae-ray-img-" not in str(info.value)


def test_local_read_passthrough(archive: Path) -> None:
    image = read_image_uri(archive / "dicom" / "series_dcm")
    assert image.GetSize() == (8, 7, 6)
    with pytest.raises(VolumeError, match="no such file"):
        read_image_uri(str(archive / "absent.nii.gz"))


def test_single_file_archive(archive: Path) -> None:
    refs = discover_scans(str(archive / "top.nii"))
    assert [(r.scan_id, r.kind) for r in refs] == [(uri_hash("top.nii"), "file")]


def test_archive_upload_puts_scans_in_s3_and_resumes(s3_bucket: str, archive: Path, capsys) -> None:
    """``uae-ray archive upload``: the scans of a local folder land in S3 where discovery finds
    them; a second run uploads nothing."""
    from uae_ray.cli import main

    dest = f"{s3_bucket}/mine"
    assert main(["archive", "upload", str(archive), dest, "-q"]) == 0
    first = capsys.readouterr().out
    local = {s.scan_id for s in discover_scans(str(archive))}
    assert {s.scan_id for s in discover_scans(dest)} == local and f"{len(local)} scans in {dest}" in first
    assert main(["archive", "upload", str(archive), dest, "-q"]) == 0
    assert capsys.readouterr().out.startswith("0 files uploaded")
    assert main(["archive", "upload", str(archive / "nope"), dest]) == 2
