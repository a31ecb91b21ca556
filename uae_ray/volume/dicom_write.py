"""A volume written as a DICOM series, one file per slice (for making test and benchmark
studies out of NIfTI cases; not an export path: real exports are the SEG / SR writers)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_dicom_series(
    folder: Path,
    image: sitk.Image,
    series_uid: str,
    modality: str = "CT",
    skip: tuple[int, ...] = (),
    prefix: str = "slice",
    tags: dict[str, str] | None = None,
) -> list[Path]:
    """Write an int16 3D image as one DICOM file per slice (SimpleITK DicomSeriesFromArray).

    Args:
        folder: Output folder (created).
        image: 3D int16 image; slices along its third axis.
        series_uid: SeriesInstanceUID (0020|000e).
        modality: 0008|0060.
        skip: Slice indices not written (to fake a missing slice).
        prefix: File name prefix (distinct per series in a shared folder).
        tags: More tags (``"gggg|eeee": value``) for every slice, e.g. PatientID, StudyDate,
            StudyInstanceUID (overrides the defaults above).
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = image.GetDirection()
    orientation = "\\".join(
        f"{v:.10g}"
        for v in (
            direction[0],
            direction[3],
            direction[6],
            direction[1],
            direction[4],
            direction[7],
        )
    )
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.GetSize()[2]):
        if k in skip:
            continue
        sl = image[:, :, k]
        slice_tags = {
            "0008|0060": modality,
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|000d": series_uid + ".0",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0037": orientation,
            "0020|0032": "\\".join(
                f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))
            ),
            "0020|0013": str(k + 1),
            "0028|1050": "40",
            "0028|1051": "400",
            **(tags or {}),
        }
        for tag, value in slice_tags.items():
            sl.SetMetaData(tag, value)
        path = folder / f"{prefix}_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        files.append(path)
    return files
