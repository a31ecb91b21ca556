"""DICOM SEG of a label map that lies on a DICOM series' own grid (highdicom, binary segments).

The label map (label k = organ ``names[k]``, e.g. ``uae-ray segment``'s output for a DICOM target)
becomes one SEG instance that references the series' instances, frame by frame, so that PACS
viewers (OHIF, 3D Slicer, ...) overlay it on the source series. Only labels that are present
become segments, numbered 1..n in label order (DICOM wants consecutive segment numbers); each
segment's label is the organ name, its property type a SNOMED CT code where pydicom's code
dictionary has one for the name (``liver``, ``kidney_left`` -> Kidney, ...), else "Anatomical
Structure".

Patient identity: highdicom copies the patient module of the source; the SEG replaces the
patient's name and ID with a pseudonym (a stable hash, given by the caller) and empties birth
date, accession number and referring physician. Study and series UIDs stay: they are what links
the SEG to its source.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.volume.colors import segment_rgb
from uae_ray.volume.errors import VolumeError

logger = logging.getLogger(__name__)
from uae_ray.volume.io import series_files

#: Geometry tolerance (mm) between the label map and the series' slice positions.
POSITION_TOL_MM = 0.05


def segment_code(name: str):
    """The SNOMED CT code of an organ name (``"kidney_left"`` -> Kidney), else Anatomical Structure."""
    from pydicom.sr.codedict import codes

    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    for k in range(len(words), 0, -1):
        key = "".join(w.capitalize() for w in words[:k])
        try:
            return getattr(codes.SCT, key)
        except AttributeError:
            continue
    return codes.SCT.AnatomicalStructure


def derived_uid(text: str) -> str:
    """A stable UID (``2.25.<128-bit decimal>``) derived from ``text``."""
    return "2.25." + str(int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:32], 16))


def _complete_uids(datasets: list, series: str) -> None:
    """Fills the UIDs that de-identified exports often blank: SOP class and instance from the
    file meta header; study, series and frame of reference (same for every slice) with stable
    UIDs derived from the instance UIDs, with a warning, since the SEG then cannot link to the
    series in a PACS.

    Raises:
        VolumeError: An instance has no SOP Instance UID anywhere.
    """
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(keyword, "") or "") and meta is not None and str(meta.get(meta_keyword, "") or ""):
                setattr(ds, keyword, meta.get(meta_keyword))
        if not str(ds.get("SOPInstanceUID", "") or ""):
            raise VolumeError(series, "an instance has no SOP Instance UID: a DICOM SEG cannot reference it")
    seed = "|".join(str(ds.SOPInstanceUID) for ds in datasets)
    blank = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if any(not str(ds.get(keyword, "") or "") for ds in datasets):
            blank.append(keyword)
            uid = derived_uid(f"{keyword}:{seed}")
            for ds in datasets:
                if not str(ds.get(keyword, "") or ""):
                    setattr(ds, keyword, uid)
    if blank:
        logger.warning("%s: the series has no %s; the DICOM SEG references derived UIDs and will not link to "
                       "the series in a PACS", series, ", ".join(blank))


def _check_grid(labels: sitk.Image, datasets: list, series: str) -> None:
    """Raises VolumeError unless ``labels`` lies on the grid of the sorted ``datasets``."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if labels.GetSize() != (cols, rows, len(datasets)):
        raise VolumeError(series, f"label map size {labels.GetSize()} is not the series' "
                                  f"{(cols, rows, len(datasets))} (the labels must lie on the series' own grid)")
    for k, ds in enumerate(datasets):
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        if np.linalg.norm(np.array(labels.TransformIndexToPhysicalPoint((0, 0, k))) - ipp) > POSITION_TOL_MM:
            raise VolumeError(series, f"slice {k} of the label map is not at the series' ImagePositionPatient "
                                      f"{ipp.round(3).tolist()}")


def dicom_seg(
    labels: sitk.Image,
    names: Mapping[int, str],
    series: str | Path,
    pseudonym: str,
    algorithm_version: str,
    series_uid: str | None = None,
    algorithm_name: str = "uae-ray MedLSAM",
    seg_uids: tuple[str, str] | None = None,
):
    """A DICOM SEG dataset of ``labels`` over the DICOM series in folder ``series``.

    Args:
        labels: Integer label map on the series' grid (as :func:`~uae_ray.volume.read_image`
            reads the series).
        names: ``{label: organ name}``; labels absent from the map are left out.
        series: Folder of the source series (local).
        pseudonym: Replaces PatientName and PatientID (e.g. a hashed patient id).
        algorithm_version: Model versions, recorded as the algorithm's version and the
            software version.
        series_uid: The SeriesInstanceUID to reference when the folder holds several.
        seg_uids: ``(series, SOP instance)`` UIDs of the SEG (default: new random ones); stable
            ones make a re-sent SEG the same instance.

    Returns:
        A ``highdicom.seg.Segmentation`` (a pydicom ``Dataset``).

    Raises:
        VolumeError: The label map is not on the series' grid, no named label is present, or
            an instance has no SOP Instance UID.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = series_files(Path(series), series_uid)
    datasets = [pydicom.dcmread(f) for f in files]
    _complete_uids(datasets, str(series))
    _check_grid(labels, datasets, str(series))
    array = sitk.GetArrayFromImage(labels)  # (z, y, x): frame k is files[k]
    present = [k for k in sorted(names) if k > 0 and np.any(array == k)]
    if not present:
        raise VolumeError(str(series), "no segmented organ to write as DICOM SEG (every label is empty)")
    frames = np.zeros(array.shape, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, label in enumerate(present, start=1):
        frames[array == label] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[label],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=segment_code(names[label]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*segment_rgb(names[label])),
        ))
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=seg_uids[0] if seg_uids else hd.UID(),
        series_number=9001,
        sop_instance_uid=seg_uids[1] if seg_uids else hd.UID(),
        instance_number=1,
        manufacturer="uae-ray",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description="uae-ray organ segmentation",
        omit_empty_frames=True,
    )
    return pseudonymize(seg, pseudonym)


#: Patient and study attributes a derived object (SEG, SR) copies from its source that
#: identify people; :func:`pseudonymize` empties them.
IDENTIFYING = ("PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs", "OtherPatientNames",
               "AccessionNumber", "ReferringPhysicianName", "InstitutionName", "InstitutionAddress",
               "StudyID", "PhysiciansOfRecord", "OperatorsName", "PerformingPhysicianName")


def pseudonymize(ds, pseudonym: str):
    """``ds`` with PatientName and PatientID replaced by ``pseudonym`` and the other
    :data:`IDENTIFYING` attributes emptied (study, series and frame UIDs kept); returns it."""
    ds.PatientName = pseudonym
    ds.PatientID = pseudonym
    for keyword in IDENTIFYING:
        if keyword in ds:
            setattr(ds, keyword, None)
    return ds


__all__ = ["IDENTIFYING", "derived_uid", "dicom_seg", "pseudonymize", "segment_code"]
