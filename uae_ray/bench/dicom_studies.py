"""DICOM studies made from NIfTI cases (for the watch tests and ``bench watch``): a CT written as
a DICOM series with PatientID, StudyDate and UIDs set, optionally moved by a translation (a
follow-up of the same patient whose anatomy sits elsewhere in the scanner)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from uae_ray.volume.dicom_write import write_dicom_series

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class Study:
    """One study as written: its folder, UIDs, patient and date, and the translation (mm, LPS)
    applied to the case's CT."""

    folder: Path
    study_uid: str
    series_uid: str
    patient_id: str
    study_date: str
    shift_mm: tuple[float, float, float]


def crop_mm(image: sitk.Image, box_mm: tuple[float, ...]) -> sitk.Image:
    """The voxels of ``image`` inside the world box ``(xmin, ymin, zmin, xmax, ymax, zmax)`` (LPS
    mm; an axis-aligned image), its geometry kept."""
    lo = image.TransformPhysicalPointToIndex(box_mm[:3])
    hi = image.TransformPhysicalPointToIndex(box_mm[3:])
    size = image.GetSize()
    start = [max(0, min(a, b)) for a, b in zip(lo, hi)]
    stop = [min(n, max(a, b) + 1) for a, b, n in zip(lo, hi, size)]
    return image[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]


def write_study(root: Path, ct: Path, name: str, patient_id: str, study_date: str, n: int,
                shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
                box_mm: tuple[float, ...] | None = None) -> Study:
    """Writes ``ct`` (int16 HU; cropped to ``box_mm`` first when given, see :func:`crop_mm`) as a
    one-series DICOM study in ``root/name``; ``n`` makes the UIDs unique (``2.25.<n>...``)."""
    image = sitk.Cast(sitk.ReadImage(str(ct)), sitk.sitkInt16)
    if box_mm is not None:
        image = crop_mm(image, box_mm)
    image.SetOrigin(tuple(o + s for o, s in zip(image.GetOrigin(), shift_mm)))
    study_uid, series_uid = f"2.25.{n}1", f"2.25.{n}2"
    tags = {
        "0010|0010": f"Doe^{name}", "0010|0020": patient_id, "0010|0030": "19600101",
        "0008|0020": study_date, "0008|0030": "101500", "0008|0050": f"ACC{n % 10**9}",  # SH: <= 16 chars
        "0020|000d": study_uid, "0020|0052": f"2.25.{n}3", "0008|0016": CT_IMAGE_STORAGE,
        "0008|0060": "CT", "0020|0010": str(n % 10**9), "0020|0011": "1",
        "0018|0050": f"{image.GetSpacing()[2]:.6g}",  # SliceThickness
    }
    folder = root / name
    write_dicom_series(folder, image, series_uid, tags=tags)
    return Study(folder, study_uid, series_uid, patient_id, study_date, shift_mm)


def upload(pacs, study: Study) -> None:
    """Stores a study's files in the PACS with STOW-RS."""
    import pydicom

    pacs.store([pydicom.dcmread(f) for f in sorted(study.folder.glob("*.dcm"))])


def wait_stable(pacs, since: int, studies: list[Study], timeout_s: float = 60.0) -> None:
    """Waits until the PACS reports each of ``studies`` stable after change ``since``.

    Raises:
        TimeoutError: Not all of them within ``timeout_s``.
    """
    import time

    wanted = {s.study_uid for s in studies}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stable = {found[0].study_uid for oid in pacs.stable_studies_since(since)[0] if (found := pacs.study(oid))}
        if wanted <= stable:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the PACS did not report {len(wanted)} studies stable within {timeout_s:.0f} s")
