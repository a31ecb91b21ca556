"""Watching an archive (an ``s3://`` prefix or a folder) instead of a PACS.

New scans are those of :func:`~uae_ray.storage.discover_scans` (image files and DICOM series
folders) that have no ``ok`` record ``<scan_id>.index`` in the watch manifest: the manifest is
the cursor (``watch/cursor.json`` counts the cycles and the scans known). A scan is indexed by
reading its patient and study date (DICOM header, or a sidecar ``meta.json``; the patient id is
hashed at once, :func:`~uae_ray.cohort.pairs.scan_info`); nothing is copied: the steps run on
the archive itself, whose cohort manifests skip what is done. A scan that cannot be indexed yet
(a DICOM series still being uploaded, say) is an error record and is tried again by the next
cycle. Scans without a patient id or date are processed but never paired.

The configured lesions of a scan are ``<lesions>/<scan path below the archive>.csv``.
"""

from __future__ import annotations

import logging

from uae_ray.storage import Manifest, ScanRef, discover_scans
from uae_ray.storage.images import patient_key
from uae_ray.storage.uri import relative_to

logger = logging.getLogger(__name__)

CURSOR_KIND = "archive-listing"
INDEX_STEP = "index"


def archive_meta(scan: ScanRef, archive: str) -> dict:
    """The watch meta of an archive scan (hashed patient, study date and time, its path below
    the archive); keys as the PACS metas of :mod:`uae_ray.watch.materialize`."""
    from uae_ray.cohort.pairs import scan_info

    info = scan_info(scan)
    return {
        "source": "archive", "rel": relative_to(scan.uri, archive),
        "patient": patient_key(info["patient"]) if info.get("patient") else None,
        "study_date": info.get("study_date") or None, "study_time": info.get("study_time") or None,
        "modality": None, "study_uid": None, "series_uid": None,
        "study_key": scan.scan_id, "series_key": scan.scan_id,
    }


def new_scans(archive: str, manifest: Manifest, replay: bool = False) -> tuple[list[ScanRef], int]:
    """``(scans not yet indexed, scans listed)``; ``replay``: every scan of the archive."""
    scans = discover_scans(archive)
    if replay:
        return scans, len(scans)
    todo = []
    for scan in scans:
        record = manifest.get(f"{scan.scan_id}.{INDEX_STEP}")
        if record is None or record.status != "ok":
            todo.append(scan)
    return todo, len(scans)
