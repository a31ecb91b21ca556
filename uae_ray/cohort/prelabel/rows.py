"""Rows of the ``cohort prelabel`` index: one per (scan, organ), schema :data:`~uae_ray.storage.schemas.PRELABEL`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from uae_ray.storage.schemas import PRELABEL, STATUS_ERROR
from uae_ray.cohort.prelabel.settings import PrelabelSettings

#: Mask statuses (graded, :mod:`uae_ray.tasks.segment.status`, or the localizer's) -> index statuses.
_STATUS = {"low_confidence": "low_confidence", "outside_view": "outside_view", "outside_fov": "outside_view",
           "no_support": "missing_in_supports"}


def row_status(status: str, n_voxels: int) -> str:
    """Index status of an :class:`~uae_ray.tasks.segment.OrganSegmentation`."""
    if status in ("ok", "low_confidence") and n_voxels == 0:
        return "not_found"
    if status == "ok":
        return "ok"
    return _STATUS.get(status, "not_found")


def prelabel_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with the :data:`~uae_ray.storage.schemas.PRELABEL` columns) as a table."""
    return pa.Table.from_pylist(list(rows), schema=PRELABEL)


def organ_rows(scan_id: str, result, prompts: Sequence, mask_uri: str, settings: PrelabelSettings,
               seg_uri: str | None = None) -> list[dict]:
    """One row per organ of a :class:`~uae_ray.tasks.segment.SegmentationResult`; ``seg_uri``:
    the scan's DICOM SEG (on the rows of the organs it holds)."""
    rows = []
    for o, p in zip(result.organs, prompts):
        status = row_status(o.status, o.n_voxels)
        message = o.message or (f"{o.name}: segment-anything found nothing in its boxes"
                                if status == "not_found" and o.n_slices else "")
        box = np.asarray(p.box_world, dtype=np.float64)
        rows.append({
            "scan_id": scan_id, "organ": o.name, "label": o.label, "status": status, "quality": float(o.quality),
            "message": message or None,
            **{k: float(v) for k, v in zip(("xmin", "ymin", "zmin", "xmax", "ymax", "zmax"), box)},
            "voxels": int(o.n_voxels), "volume_ml": float(o.volume_ml), "n_slices": int(o.n_slices),
            "mask_uri": mask_uri, "dicom_seg_uri": seg_uri if status in ("ok", "low_confidence") else None,
            "localizer": settings.method, "boxes": settings.boxes,
            "localizer_version": settings.localizer_version, "sam_version": result.model_version,
            "seconds": float(o.localize_seconds + o.seconds),
        })
    return rows


def error_rows(scan_id: str, error: str, settings: PrelabelSettings, uri: str | None = None) -> list[dict]:
    """The rows of a scan that failed: one ``error`` row per organ. The scan's URI in the
    message becomes ``scan <scan_id>`` (the index holds no paths; the manifest has both)."""
    nan = float("nan")
    if uri:
        error = error.replace(uri, f"scan {scan_id}")
    return [{
        "scan_id": scan_id, "organ": organ, "label": k, "status": STATUS_ERROR, "quality": nan, "message": error,
        "xmin": nan, "ymin": nan, "zmin": nan, "xmax": nan, "ymax": nan, "zmax": nan,
        "voxels": 0, "volume_ml": 0.0, "n_slices": 0, "mask_uri": None, "dicom_seg_uri": None,
        "localizer": settings.method,
        "boxes": settings.boxes, "localizer_version": settings.localizer_version,
        "sam_version": settings.sam_version, "seconds": 0.0,
    } for k, organ in enumerate(settings.organs, start=1)]
