"""Images behind URIs: read local or s3:// images, and discover the scans of an archive.

Reading: local paths go straight to :func:`uae_ray.volume.read_image`. An ``s3://`` URI that
names an image file (by suffix, see :data:`IMAGE_SUFFIXES`; a ``.mhd`` / ``.nhdr`` header brings
its data file along) or a prefix (a DICOM series folder) is downloaded to a temporary folder,
read, and the folder is removed. Errors name the s3:// URI, never the temporary path.

Discovery (:func:`discover_scans`) lists an archive prefix once and returns one
:class:`ScanRef` per scan:

* every image file by suffix (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``),
  except files named like label maps (:data:`LABEL_PATTERNS`: ``labels.*``, ``*_seg*``,
  ``*mask*``, ...);
* every folder of DICOM files, as one scan: a folder holding ``.dcm`` files, or holding files
  without a suffix (a purely numeric "suffix" counts as none: DICOM files are often named by
  their UID, ``CT.1.3.12.2...``) and no image or label file, whose first such file carries the
  DICOM magic ``DICM`` at byte 128 (one 4-byte range read per folder, so ``README`` / ``LICENSE``
  folders are not taken for series). Sub-folders are separate scans; a folder with several
  series is one scan (pick the series with ``series_uid`` when reading).

Scan ids: ``scan_id`` is the first 16 hex digits of the SHA-256 of the scan's path relative to
the archive root, with ``/`` separators and no trailing slash (e.g. ``"case7/image.nii.gz"`` or
``"dicom/ts_upper_abdomen"``). It is therefore stable across runs, identical for a local copy and
an S3 copy of the same archive, and independent of where the archive is mounted; it contains no
patient name or id in clear. It is a pseudonym, not anonymisation: someone who can guess a
path can recompute its id.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from uae_ray.storage.objects import (
    download,
    download_prefix,
    exists,
    is_dir,
    list_uris,
    read_bytes,
)
from uae_ray.storage.uri import (
    as_str,
    basename,
    is_s3,
    join,
    parent,
    relative_to,
    uri_hash,
)

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

#: Single-file image formats recognised by suffix (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Basename patterns (fnmatch, case-insensitive) of label maps, never listed as scans.
LABEL_PATTERNS: tuple[str, ...] = (
    "labels.*", "label.*", "labels", "*_seg*", "seg.*", "segmentation*", "*mask*", "*_label*",
)
DICOM_SUFFIX = ".dcm"
SCAN_ID_HEX = 16
_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128
_NUMERIC_SUFFIX = re.compile(r"\.\d+$")


def patient_key(patient: str) -> str:
    """The stable hashed id of a patient id (the raw id goes no further than this call)."""
    return uri_hash(f"patient:{patient}", SCAN_ID_HEX)


def image_pseudonym(image: "sitk.Image", fallback: str) -> str:
    """:func:`patient_key` of the image's DICOM PatientID, or ``fallback`` when it has none."""
    pid = image.GetMetaData("0010|0020").strip() if image.HasMetaDataKey("0010|0020") else ""
    return patient_key(pid) if pid else fallback


@dataclass(frozen=True)
class ScanRef:
    """One scan of an archive.

    Attributes:
        uri: Image file, or DICOM series folder (no trailing slash), local path or s3:// URI.
        scan_id: 16 hex digits, SHA-256 of the path relative to the archive root.
        kind: ``"file"`` (single image file) or ``"dicom"`` (series folder).
    """

    uri: str
    scan_id: str
    kind: Literal["file", "dicom"] = "file"


# --------------------------------------------------------------------------- naming rules


def is_image_name(name: str) -> bool:
    """True for file names with an image suffix (:data:`IMAGE_SUFFIXES`)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_label_name(name: str, patterns: Sequence[str] = LABEL_PATTERNS) -> bool:
    """True for names that look like label maps (``labels.nii.gz``, ``*_seg*``, ``*mask*``)."""
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, p.lower()) for p in patterns)


def _is_dicom_candidate(name: str) -> tuple[bool, bool]:
    """``(is .dcm, is suffix-less)`` for a file name (dotfiles are neither)."""
    if name.startswith("."):
        return False, False
    lower = name.lower()
    if lower.endswith(DICOM_SUFFIX):
        return True, False
    # Strip every numeric dotted group: "CT.1.3.12.2" -> "CT"; "1.2.840.1" -> "1".
    stem = name
    while _NUMERIC_SUFFIX.search(stem):
        stem = _NUMERIC_SUFFIX.sub("", stem)
    return False, "." not in stem


def _has_dicom_magic(uri: str) -> bool:
    try:
        head = read_bytes(uri, offset=_DICOM_MAGIC_OFFSET, length=len(_DICOM_MAGIC))
    except OSError as exc:
        logger.warning("%s: cannot read to check DICOM magic: %s", uri, type(exc).__name__)
        return False
    return head == _DICOM_MAGIC


def scan_id_for(uri: str | os.PathLike[str], archive_uri: str | os.PathLike[str]) -> str:
    """Scan id of ``uri`` inside ``archive_uri`` (see the module docstring).

    When ``uri`` is the archive root itself, its base name is hashed instead.
    """
    rel = relative_to(uri, archive_uri) or basename(uri)
    return uri_hash(rel, SCAN_ID_HEX)


# --------------------------------------------------------------------------- discovery


def discover_scans(
    archive_uri: str | os.PathLike[str], label_patterns: Sequence[str] = LABEL_PATTERNS
) -> list[ScanRef]:
    """Find the scans below an archive folder / prefix (rules in the module docstring).

    Args:
        archive_uri: Local folder or ``s3://bucket/prefix`` (a single image file also works).
        label_patterns: Basename patterns to exclude as label maps.

    Returns:
        Scans sorted by their path relative to the archive root.
    """
    root = as_str(archive_uri).rstrip("/") if is_s3(archive_uri) else as_str(archive_uri)
    files = list_uris(root, recursive=True)
    scans: list[tuple[str, ScanRef]] = []
    dcm: dict[str, list[str]] = defaultdict(list)
    bare: dict[str, list[str]] = defaultdict(list)
    has_image: set[str] = set()
    for uri in files:
        name, folder = basename(uri), parent(uri)
        if is_image_name(name):
            has_image.add(folder)
            if not is_label_name(name, label_patterns):
                rel = relative_to(uri, root) or name
                scans.append((rel, ScanRef(uri, uri_hash(rel, SCAN_ID_HEX), "file")))
            continue
        is_dcm, is_bare = _is_dicom_candidate(name)
        if is_dcm:
            dcm[folder].append(uri)
        elif is_bare:
            bare[folder].append(uri)
    for folder in sorted(set(dcm) | set(bare)):
        if folder not in dcm:
            if folder in has_image or not _has_dicom_magic(sorted(bare[folder])[0]):
                continue
        rel = relative_to(folder, root) if _below(folder, root) else ""
        rel = rel or basename(folder)
        scans.append((rel, ScanRef(folder, uri_hash(rel, SCAN_ID_HEX), "dicom")))
    scans.sort(key=lambda item: item[0])
    logger.info("%s: discovered %d scans in %d files", root, len(scans), len(files))
    return [ref for _, ref in scans]


def _below(uri: str, root: str) -> bool:
    try:
        relative_to(uri, root)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- reading


def _sidecar_names(header_path: str) -> list[str]:
    """Data files a detached header (``.mhd`` ElementDataFile, ``.nhdr`` data file) refers to."""
    with open(header_path, "rb") as fh:
        text = fh.read(1 << 16).decode("latin-1")
    names: list[str] = []
    if header_path.lower().endswith(".mhd"):
        match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, re.MULTILINE)
        if match:
            value = match.group(1)
            if value.upper() == "LOCAL":
                return []
            if value.upper() == "LIST":
                after = text[match.end() :]
                names = [ln.strip() for ln in after.splitlines() if ln.strip()]
            else:
                names = [value.split()[0] if "%" in value else value]
    else:
        match = re.search(r"^\s*data ?file\s*:\s*(.+?)\s*$", text, re.MULTILINE | re.IGNORECASE)
        if match and not match.group(1).upper().startswith("LIST"):
            names = [match.group(1)]
    return [n for n in names if "%" not in n]


def _fetch_s3_image(uri: str, tmpdir: str) -> str:
    """Download an s3:// image file (with its data file) or prefix; return the local path."""
    name = basename(uri)
    if is_image_name(name):
        local = download(uri, os.path.join(tmpdir, name))
        if name.lower().endswith((".mhd", ".nhdr")):
            for data_name in _sidecar_names(local):
                rel = posixpath.normpath(data_name)
                if rel.startswith("..") or posixpath.isabs(rel):
                    continue
                download(join(parent(uri), rel), os.path.join(tmpdir, rel))
        return local
    if is_dir(uri):
        folder = os.path.join(tmpdir, name or "series")
        download_prefix(uri, folder)
        return folder
    if exists(uri):  # an object without an image suffix: let SimpleITK try it
        return download(uri, os.path.join(tmpdir, name))
    raise FileNotFoundError(uri)


def with_local_copy(uri: str | os.PathLike[str], reader: Callable[[str], Any]) -> Any:
    """``reader(local path)`` of a local path, or of a temporary download of an ``s3://`` image
    file or DICOM series prefix (removed afterwards); VolumeErrors name the URI."""
    from uae_ray.volume import VolumeError

    text = as_str(uri)
    if not is_s3(text):
        return reader(text)
    with tempfile.TemporaryDirectory(prefix="uae-ray-img-") as tmpdir:
        try:
            local = _fetch_s3_image(text.rstrip("/"), tmpdir)
        except FileNotFoundError:
            raise VolumeError(text, "no such object or prefix") from None
        except OSError as exc:
            raise VolumeError(text, f"cannot download: {exc}") from exc
        try:
            return reader(local)
        except VolumeError as exc:
            cause = exc.cause.replace(local, text.rstrip("/")).replace(tmpdir, parent(text))
            raise VolumeError(text, cause) from None


def read_image_uri(
    uri: str | os.PathLike[str], series_uid: str | None = None, *, validate: bool = True
) -> sitk.Image:
    """Read a 3D image from a local path or s3:// URI (file or DICOM series folder).

    Args:
        uri: Local file / folder, ``s3://bucket/key`` of an image file, or ``s3://bucket/prefix``
            of a DICOM series folder.
        series_uid: For DICOM folders with several series: the SeriesInstanceUID to read.
        validate: Passed to :func:`uae_ray.volume.read_image`.

    Returns:
        The image as :func:`uae_ray.volume.read_image` returns it.

    Raises:
        VolumeError: ``"<uri>: <cause>"``, naming the s3:// URI (never the temporary copy).
        StorageConfigError: s3:// URI without a configured endpoint.
    """
    from uae_ray.volume import read_image

    return with_local_copy(uri, lambda p: read_image(p, series_uid, validate=validate))


def read_labels_uri(uri: str | os.PathLike[str]) -> sitk.Image:
    """Read an integer label map from a local path or s3:// URI (see :func:`read_image_uri`)."""
    from uae_ray.volume import read_labels

    return with_local_copy(uri, read_labels)
