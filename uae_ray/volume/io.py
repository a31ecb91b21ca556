"""Reading images and label maps from local files and DICOM series folders.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD, MetaImage (``.mha`` / ``.mhd``), anything else
SimpleITK reads from one file, and DICOM series folders. ``s3://`` URIs are handled by the
storage layer (download first).

Pixel types are kept as stored (an int16 CT stays int16, saving memory); intensities are cast to
float32 only by :func:`uae_ray.volume.prepare_volume`. DICOM series get GDCM's rescale
slope/intercept applied (so CT is in HU) and carry the first file's DICOM tags (e.g. the
modality ``0008|0060``) as image metadata.
"""

from __future__ import annotations

import gzip
import logging
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.volume.errors import VolumeError
from uae_ray.volume.validate import (
    check_geometry,
    check_shape,
    is_integer_pixel_type,
    validate_image,
)

logger = logging.getLogger(__name__)

#: Relative tolerance on the spacing between consecutive DICOM slices (a missing slice doubles
#: one gap; scanners' rounding of positions stays far below this).
SLICE_GAP_RTOL = 0.05
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"
_MAX_MESSAGE_CHARS = 300
_CHUNK = 1 << 20


# -- error messages ---------------------------------------------------------------------------


def itk_error_summary(exc: BaseException) -> str:
    """Condense a SimpleITK/ITK exception text to one meaningful line.

    ITK messages span several lines (``Exception thrown in SimpleITK ...: file.cxx:99:`` then
    ``ITK ERROR: SomeIO(0x...): cause`` and sometimes nested detail lines). Keep the cause after
    the ``ERROR:`` prefix plus the last (innermost) detail line.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    if not lines:
        return type(exc).__name__
    start = next((i for i, ln in enumerate(lines) if "ERROR:" in ln), 0)
    head = lines[start].split("ERROR:", 1)[-1].strip()
    head = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", head)
    rest = [re.sub(r"^\[\w+\]\s*", "", ln) for ln in lines[start + 1 :]]
    msg = f"{head} {rest[-1]}" if rest else head
    msg = " ".join(msg.split())
    return msg if len(msg) <= _MAX_MESSAGE_CHARS else msg[: _MAX_MESSAGE_CHARS - 3] + "..."


# -- NIfTI completeness (ITK zero-fills truncated NIfTI files silently) ----------------------


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (``vox_offset`` + voxel data), from its header."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    if any(int(d) < 0 for d in dims[1 : ndim + 1]):
        return None
    nvox = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=np.int64))
    return max(vox_offset, 348) + nvox * bitpix // 8


def _check_nifti_complete(path: Path) -> None:
    """Raise :class:`VolumeError` if a ``.nii`` / ``.nii.gz`` file is truncated or corrupt."""
    try:
        if path.name.lower().endswith(".gz"):
            total, header = 0, b""
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    if len(header) < 540:
                        header += chunk[: 540 - len(header)]
                    total += len(chunk)
        else:
            with open(path, "rb") as fh:
                header = fh.read(540)
            total = path.stat().st_size
    except (EOFError, OSError, zlib.error) as exc:
        raise VolumeError(path, f"corrupt or truncated file ({exc})") from exc
    expected = _nifti_expected_bytes(header)
    if expected is not None and total < expected:
        raise VolumeError(
            path, f"truncated NIfTI file: {total} bytes of data, header needs {expected}"
        )


# -- DICOM series -----------------------------------------------------------------------------


def _read_dicom_header(filename: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _parse_floats(reader: sitk.ImageFileReader, tag: str) -> np.ndarray | None:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        return np.array([float(v) for v in reader.GetMetaData(tag).split("\\")], dtype=np.float64)
    except ValueError:
        return None


def check_slice_positions(files: list[str], source: str) -> None:
    """Check that DICOM slices are uniformly spaced along the slice normal, none missing.

    Slice positions are ``dot(ImagePositionPatient, normal)`` with
    ``normal = row x column`` of ImageOrientationPatient (tags 0020|0032, 0020|0037). Files
    without these tags are not checked (a warning is logged).

    Args:
        files: The series' file names (any order).
        source: Folder name for messages.

    Raises:
        VolumeError: on mixed orientations, duplicate positions or non-uniform gaps (beyond
            ``SLICE_GAP_RTOL`` of the median gap, e.g. a missing slice).
    """
    if len(files) < 2:
        return
    positions, orientation = [], None
    for name in files:
        header = _read_dicom_header(name)
        ipp = _parse_floats(header, _TAG_POSITION)
        iop = _parse_floats(header, _TAG_ORIENTATION)
        if ipp is None or iop is None or ipp.size != 3 or iop.size != 6:
            logger.warning(
                "%s: %s lacks position/orientation tags; slice spacing not checked",
                source,
                Path(name).name,
            )
            return
        if orientation is None:
            orientation = iop
        elif not np.allclose(iop, orientation, atol=1e-4):
            raise VolumeError(source, "DICOM slices have different orientations (0020|0037)")
        positions.append(ipp)
    normal = np.cross(orientation[:3], orientation[3:])
    z = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(z)
    median = float(np.median(gaps))
    if median <= 1e-6 or np.any(gaps <= 1e-6):
        raise VolumeError(source, "DICOM series has slices at duplicate positions")
    bad = np.abs(gaps - median) > SLICE_GAP_RTOL * median
    if np.any(bad):
        i = int(np.argmax(bad))
        raise VolumeError(
            source,
            f"DICOM slices are not uniformly spaced (missing slice?): gap of {gaps[i]:.3f} mm "
            f"between positions {z[i]:.3f} and {z[i + 1]:.3f} mm, median gap {median:.3f} mm "
            f"over {len(files)} slices",
        )


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's global warning printout (e.g. GDCM's "No Series were found") for a block."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def series_files(folder: Path, series_uid: str | None = None) -> list[str]:
    """The files of one DICOM series in a folder, in slice order (as SimpleITK reads them).

    Raises:
        VolumeError: No series, an unknown ``series_uid``, or several series without one.
    """
    with _itk_warnings_off():
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise VolumeError(folder, "no DICOM series found in folder")
    if series_uid is not None:
        if series_uid not in ids:
            raise VolumeError(
                folder, f"series {series_uid} not found; series here: {', '.join(ids)}"
            )
        uid = series_uid
    elif len(ids) > 1:
        listing = "; ".join(
            f"{u} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), u))} files)"
            for u in ids
        )
        raise VolumeError(
            folder, f"{len(ids)} DICOM series in folder, pick one with series_uid: {listing}"
        )
    else:
        uid = ids[0]
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from a folder (not recursive).

    Args:
        folder: Folder holding the DICOM files.
        series_uid: SeriesInstanceUID to read; required when the folder holds several series.

    Returns:
        3D image (x, y, z) in LPS with rescale slope/intercept applied, carrying the first
        file's DICOM tags as metadata.

    Raises:
        VolumeError: no series / several series without ``series_uid`` (the message lists each
            UID with its file count) / unknown ``series_uid`` / non-uniform or missing slices /
            unreadable files.
    """
    folder = Path(folder)
    files = series_files(folder, series_uid)
    check_slice_positions(files, str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    first = _read_dicom_header(files[0])
    for key in first.GetMetaDataKeys():
        image.SetMetaData(key, first.GetMetaData(key))
    logger.debug("%s: read DICOM series of %d files, size %s", folder, len(files), image.GetSize())
    return image


# -- public readers ---------------------------------------------------------------------------


def _read_any(path: Path, series_uid: str | None) -> sitk.Image:
    """Read a file or DICOM folder, turning every failure into a one-line VolumeError."""
    if not path.exists():
        raise VolumeError(path, "no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise VolumeError(path, "empty file (0 bytes)")
    try:
        if path.is_dir():
            return read_dicom_series(path, series_uid)
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_complete(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(path, f"cannot read image: {itk_error_summary(exc)}") from exc


def read_image(
    path: str | Path, series_uid: str | None = None, *, validate: bool = True
) -> sitk.Image:
    """Read a 3D image from a local file or DICOM series folder.

    Args:
        path: ``.nii`` / ``.nii.gz`` / ``.nrrd`` / ``.mha`` / ``.mhd`` (or another format
            SimpleITK reads) file, or a folder holding a DICOM series.
        series_uid: For DICOM folders with several series: the SeriesInstanceUID to read.
        validate: Run :func:`validate_image` on the result (default True).

    Returns:
        ``sitk.Image`` in its stored pixel type and geometry (size/spacing/origin in x, y, z).

    Raises:
        VolumeError: unreadable, truncated or invalid input (one-line ``"<path>: <cause>"``).
    """
    if str(path).startswith("s3://"):
        raise VolumeError(
            path, "s3:// URIs are fetched by uae_ray.storage; read_image reads local paths"
        )
    path = Path(path)
    image = _read_any(path, series_uid)
    if validate:
        validate_image(image, str(path))
    return image


def read_labels(path: str | Path) -> sitk.Image:
    """Read an integer label map (0 = background).

    Float label files whose values are all integers (common after some conversions) are
    accepted and cast to int32 with a warning.

    Args:
        path: Label file (NIfTI, NRRD, MHA, ...) or DICOM folder.

    Returns:
        3D ``sitk.Image`` with an integer pixel type, labels >= 0.

    Raises:
        VolumeError: unreadable file, not scalar 3D, bad geometry, non-integer or negative
            values.
    """
    path = Path(path)
    source = str(path)
    image = _read_any(path, None)
    check_shape(image, source)
    check_geometry(image, source)
    array = sitk.GetArrayViewFromImage(image)
    if not is_integer_pixel_type(image):
        if not (np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))):
            raise VolumeError(
                source, f"label map must hold integers; got {image.GetPixelIDTypeAsString()}"
            )
        logger.warning("%s: float label map with integer values; casting to int32", source)
        image = sitk.Cast(image, sitk.sitkInt32)
        array = sitk.GetArrayViewFromImage(image)
    if array.min() < 0:
        raise VolumeError(source, f"label map has negative labels (min {array.min()})")
    if array.max() == 0:
        logger.warning("%s: label map is all background", source)
    return image
