"""Writing results where the user asked: a local path or an ``s3://`` URI, always atomically.

Every writer here produces the file locally first (a temporary file beside the destination,
renamed into place) and, for ``s3://`` destinations, uploads that finished file in one atomic
publication (:func:`uae_ray.storage.upload_file`), so a reader never sees half a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from uae_ray.atomic import atomic_path
from uae_ray.storage import is_s3, upload_file


def write_output(uri: str, write_local: Callable[[str], None]) -> str:
    """Runs ``write_local(path)`` for a local ``uri``; for ``s3://``, on a temporary local file of
    the same name that is then uploaded. ``write_local`` must itself write atomically (all
    writers of this module do). Returns ``uri``."""
    text = str(uri)
    if not is_s3(text):
        write_local(text)
        return text
    name = text.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="uae-ray-out-") as tmp:
        local = os.path.join(tmp, name)
        write_local(local)
        upload_file(local, text)
    return text


def write_image(image: sitk.Image, uri: str) -> str:
    """An image (NIfTI / NRRD / MHA by suffix, compressed), local or ``s3://``, atomically."""

    def local(path: str) -> None:
        with atomic_path(path, "".join(Path(path).suffixes) or ".nii.gz") as tmp:
            sitk.WriteImage(image, tmp, useCompression=True)

    return write_output(uri, local)


def write_text(text: str, uri: str) -> str:
    """A UTF-8 text file (``\\n`` line ends), local or ``s3://``, atomically."""

    def local(path: str) -> None:
        with atomic_path(path, ".tmp") as tmp:
            Path(tmp).write_text(text, encoding="utf-8", newline="\n")

    return write_output(uri, local)


def write_markups(groups, csv_uri: str) -> str:
    """3D Slicer markups (``.mrk.json``, LPS) of point groups beside a CSV output (local or
    ``s3://``): ``x.csv`` -> ``x.mrk.json``. Returns its URI."""
    from uae_ray.tasks.markups import markups_json, markups_path

    return write_text(markups_json(groups), markups_path(str(csv_uri)))


def label_map_sidecar(uri: str) -> str:
    """The organ-name sidecar of a label map: ``<uri minus .nii.gz or .nii>.json``."""
    text = str(uri)
    for suffix in (".nii.gz", ".nii"):
        if text.endswith(suffix):
            return text[: -len(suffix)] + ".json"
    return text + ".json"


def write_label_map(labels: sitk.Image, sidecar: dict, uri: str) -> tuple[str, str]:
    """A label map (NIfTI) and its sidecar JSON (:func:`label_map_sidecar`), each atomically.

    Returns:
        ``(label map URI, sidecar URI)``.
    """
    side = label_map_sidecar(uri)
    write_image(labels, uri)
    write_text(json.dumps(sidecar, indent=2) + "\n", side)
    return str(uri), side


def write_dicom_seg(seg, uri: str) -> str:
    """A ``highdicom`` / ``pydicom`` dataset (e.g. a DICOM SEG) as a ``.dcm`` file, atomically."""

    def local(path: str) -> None:
        with atomic_path(path, ".dcm") as tmp:
            seg.save_as(tmp, enforce_file_format=True)

    return write_output(uri, local)


def write_segmentation(result, uri: str) -> tuple[str, str]:
    """A :class:`~uae_ray.tasks.segment.SegmentationResult` as a label map + sidecar
    (:func:`write_label_map`). Returns ``(label map URI, sidecar URI)``."""
    return write_label_map(result.labels, result.sidecar(), uri)


def write_segmentation_seg(result, series: str, uri: str, pseudonym: str, series_uid: str | None = None) -> str:
    """A :class:`~uae_ray.tasks.segment.SegmentationResult` as a DICOM SEG over its target's DICOM
    series (:func:`~uae_ray.volume.dicom_seg.dicom_seg`), atomically.

    Args:
        series: The target's DICOM series folder (local, or an ``s3://`` prefix).
        uri: The SEG file (``.dcm``), local or ``s3://``.
        pseudonym: Replaces the patient's name and ID in the SEG.

    Raises:
        VolumeError: The series cannot be read or referenced, or no organ was segmented.
    """
    from uae_ray.storage.images import with_local_copy
    from uae_ray.volume.dicom_seg import dicom_seg

    seg = with_local_copy(series, lambda folder: dicom_seg(result.labels, result.names, folder, pseudonym,
                                                            result.model_version, series_uid))
    return write_dicom_seg(seg, uri)


__all__ = ["label_map_sidecar", "write_dicom_seg", "write_segmentation", "write_segmentation_seg", "write_image", "write_label_map", "write_output", "write_text"]
