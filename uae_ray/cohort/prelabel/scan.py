"""The per-scan work of ``cohort prelabel``: the Ray actor that holds the models, localize + segment one
scan, write its label map, DICOM SEG, QC images and index part."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence


from uae_ray.cohort.embed import persist_record
from uae_ray.cohort.runner import apply_worker_env, one_line
from uae_ray.storage import ScanRef, size, write_bytes_atomic, write_table_atomic
from uae_ray.storage.schemas import STATUS_ERROR, STATUS_OK
from uae_ray.cohort.prelabel.rows import organ_rows, prelabel_table
from uae_ray.cohort.prelabel.settings import PrelabelSettings, dicom_seg_uri, labels_uri, part_uri, qc_uri

logger = logging.getLogger(__name__)


class _AlreadyReported(logging.Filter):
    """Drops the localizer's per-scan warnings about support label files the driver named."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.getMessage().startswith(self.prefixes))


class PrelabelWorker:
    """A Ray actor of ``cohort prelabel``: loads the job's segmenter and localizer once, then
    pre-labels scans one at a time (:meth:`run`)."""

    def __init__(self, settings: PrelabelSettings) -> None:
        from uae_ray.api.models import make_localizer_factory, make_segmenter

        apply_worker_env(settings.env)
        self.settings = settings
        self.segmenter = make_segmenter(settings.triton_url, settings.sam_checkpoint, settings.sam_kind)
        self.factory = make_localizer_factory(settings.method, settings.triton_url, settings.checkpoint,
                                              settings.medlam_checkpoint, settings.embedding_mode,
                                              support_maps=settings.support_maps)
        # the driver already named the support label files with problems: not once per scan again
        quiet = _AlreadyReported([f"{labels}: " for labels in settings.reported])
        for name in ("uae_ray.tasks.localize.embedding", "uae_ray.tasks.localize.medlam"):
            logging.getLogger(name).addFilter(quiet)

    def run(self, scan: ScanRef) -> dict[str, Any]:
        """:func:`prelabel_scan` with this actor's models."""
        if self.segmenter.version != self.settings.sam_version:
            record = {"scan_id": scan.scan_id, "uri": scan.uri, "status": STATUS_ERROR,
                      "error": f"segment-anything model {self.segmenter.version} in the worker, "
                               f"{self.settings.sam_version} on the driver (did the server's model change?)"}
            return persist_record(self.settings.manifest, record)
        return prelabel_scan(scan, self.settings, (self.segmenter, self.factory))


def write_qc_images(out: str, scan_id: str, image, modality: str, result) -> int:
    """Renders and writes the QC PNG of every segmented organ; returns how many. A rendering
    failure is a warning (the scan's results stand)."""
    from uae_ray.report.masks import mask_strip_png, render_mask

    n = 0
    for o in result.organs:
        if o.n_voxels == 0:
            continue
        try:
            images = render_mask(image, result.labels, o.label, modality)
            if images:
                write_bytes_atomic(qc_uri(out, scan_id, o.label), mask_strip_png(images))
                n += 1
        except Exception as e:  # QC only
            logger.warning("scan %s, %s: QC image not written: %s", scan_id, o.name, one_line(e))
    return n


def prelabel_scan(scan: ScanRef, settings: PrelabelSettings, models: tuple) -> dict[str, Any]:
    """Localizes and segments the organs in one scan with ``models`` ``(segmenter, localizer
    factory)``; writes its label map, part table, QC images and (``settings.dicom_seg``) DICOM
    SEG. Never raises: returns a manifest record."""
    apply_worker_env(settings.env)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"scan_id": scan.scan_id, "uri": scan.uri}
    try:
        from uae_ray.storage.images import with_local_copy

        if settings.dicom_seg and scan.kind == "dicom":  # one download serves the image and the SEG's references
            mask_uri, rows = with_local_copy(scan.uri, lambda local: _prelabel(scan, local, settings, models))
        else:
            mask_uri, rows = _prelabel(scan, scan.uri, settings, models)
        record.update(status=STATUS_OK, model_version=settings.version, output_uri=mask_uri, n_bytes=size(mask_uri))
        marked = [r for r in rows if r["status"] != "ok"]
        if marked:  # the scan is done; its marked organs are rows with a status and message
            record["error"] = f"{len(marked)} organ(s) marked: {marked[0]['message']} [{marked[0]['status']}]"
    except Exception as e:  # recorded per scan; the job goes on
        record.update(status=STATUS_ERROR, error=one_line(e))
    record["seconds"] = time.perf_counter() - t0
    return persist_record(settings.manifest, record)


def _prelabel(scan: ScanRef, source: str, settings: PrelabelSettings, models: tuple) -> tuple[str, list[dict]]:
    """The work of :func:`prelabel_scan` on ``source`` (the scan's URI or a local copy of it);
    returns the label map's URI and the scan's rows."""
    from uae_ray.storage.images import read_image_uri
    from uae_ray.api.outputs import write_segmentation
    from uae_ray.tasks.segment import TargetSlices, localize_prompts, segment_prompts
    from uae_ray.tasks.segment.status import default_calibration
    from uae_ray.volume import detect_modality

    segmenter, factory = models
    image = read_image_uri(source)
    modality = detect_modality(image, scan.uri, settings.modality)
    prepared = TargetSlices(image, modality, segmenter.config)
    prompts = localize_prompts(factory, settings.supports, image, prepared, settings.organs, settings.boxes,
                               modality)
    result = segment_prompts(segmenter, prepared, prompts, calibration=default_calibration())
    mask_uri = labels_uri(settings.out, scan.scan_id)
    write_segmentation(result, mask_uri)
    seg_uri = _write_dicom_seg(scan, source, image, result, settings)
    rows = organ_rows(scan.scan_id, result, prompts, mask_uri, settings, seg_uri)
    write_table_atomic(prelabel_table(rows), part_uri(settings.out, scan.scan_id))
    if settings.qc:
        write_qc_images(settings.out, scan.scan_id, image, modality, result)
    return mask_uri, rows


def _write_dicom_seg(scan: ScanRef, source: str, image, result, settings: PrelabelSettings) -> str | None:
    """The scan's DICOM SEG URI when ``settings.dicom_seg`` asks for one and it could be written
    (a DICOM series scan with at least one segmented organ); else None, with a warning.
    ``source``: the series folder (the scan's URI or a local copy)."""
    if not settings.dicom_seg or not any(o.status in ("ok", "low_confidence") and o.n_voxels > 0 for o in result.organs):
        return None
    if scan.kind != "dicom":
        logger.warning("scan %s: not a DICOM series, no DICOM SEG", scan.scan_id)
        return None
    from uae_ray.storage.images import image_pseudonym
    from uae_ray.api.outputs import write_segmentation_seg
    from uae_ray.volume import VolumeError

    uri = dicom_seg_uri(settings.out, scan.scan_id)
    try:
        return write_segmentation_seg(result, source, uri, image_pseudonym(image, scan.scan_id))
    except (VolumeError, ValueError) as e:
        cause = one_line(e).replace(source, f"scan {scan.scan_id}").replace(scan.uri, f"scan {scan.scan_id}")
        logger.warning("scan %s: no DICOM SEG: %s", scan.scan_id, cause)
        return None
