"""``uae-ray cohort prelabel``: organs localized and segmented in every scan of an archive from k
annotated support scans (MedLSAM, as ``uae-ray segment``), one Ray task per scan.

The driver loads the supports once (a support that cannot be read is an error line and is left
out; a support whose labels lack an organ is named in a warning and not used for that organ; an
organ that no support has is marked in every scan's rows and the others go on), embeds them once
for the embedding localizer, and ships both to the workers through the object store. Each task
reads its scan, localizes the organs (:func:`~uae_ray.tasks.segment.localize_prompts`), segments
them with segment-anything (Triton with ``triton_url``, else in-process), writes the label map,
its part of the index and, for the QC report, one PNG per segmented organ.

Layout under ``out``:
  ``labels/<scan_id>.nii.gz`` + ``.json``    label map on the scan's grid, label k = the k-th organ
                                            of ``organs`` (the ``segment`` contract) and its sidecar
  ``dicom_seg/<scan_id>.dcm``               with ``dicom_seg``, for DICOM series scans: the label
                                            map as a DICOM SEG referencing the series (patient name
                                            and ID replaced by the hashed patient id)
  ``prelabel/parts/<scan_id>.parquet``      per-scan rows (written by the workers)
  ``prelabel/index.parquet``                all rows, one per (scan, organ), schema
                                            :data:`~uae_ray.storage.schemas.PRELABEL`; a scan that
                                            failed has one ``error`` row per organ
  ``qc/prelabel/<scan_id>/<label>.png``     the three slices through each organ with its contour
  ``qc/prelabel.html``                      the QC report (default; ``report`` moves or disables it)
  ``manifests/prelabel``                    status per scan
Only hashed scan ids appear in the index and the report. A re-run skips the scans that are
``ok`` for the same supports, organs, options and model versions (``force`` redoes them).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from uae_ray.cohort.embed import add_record, pending_scans, persist_record
from uae_ray.cohort.runner import apply_worker_env, fan_out_actors, init_ray, one_line, worker_env
from uae_ray.storage import (
    Manifest,
    ScanRef,
    discover_scans,
    exists,
    is_s3,
    join,
    read_bytes,
    read_table,
    size,
    upload_file,
    write_bytes_atomic,
    write_table_atomic,
)
from uae_ray.storage.schemas import PRELABEL, SCHEMA_KEY, STATUS_ERROR, STATUS_OK
from uae_ray.storage.uri import uri_hash
from uae_ray.tasks.support import partial_supports

logger = logging.getLogger(__name__)

PRELABEL_MANIFEST = "manifests/prelabel"
#: Scans shown in the QC report (the index has all of them).
REPORT_MAX_SCANS = 200
#: Localizer / segmentation statuses -> index statuses.
_STATUS = {"no_support": "missing_in_supports", "outside_fov": "outside_fov", "empty": "outside_fov",
           "not_found": "not_localized"}


class PrelabelError(ValueError):
    """Nothing to do: no organ named, no usable support, no support with any of the organs, or
    a model that cannot be loaded (one line)."""


@dataclass(frozen=True)
class PrelabelSettings:
    """What every prelabel task needs (shared with the workers through the object store).

    Attributes:
        supports: the loaded supports that have at least one of the organs.
        support_maps: ``{support image URI: EmbeddingMaps}`` (embedding localizer), else empty.
        reported: label files whose missing organs the driver has already named (the workers'
            localizer repeats those warnings per scan; they are dropped there).
        version: manifest version (localizer version | SAM version | job key).
    """

    out: str
    manifest: str
    organs: tuple[str, ...]
    supports: tuple
    support_maps: dict = field(repr=False)
    boxes: str
    method: str
    embedding_mode: str | None
    triton_url: str | None
    checkpoint: str | None
    medlam_checkpoint: str | None
    sam_checkpoint: str | None
    sam_kind: str | None
    modality: str | None
    localizer_version: str
    sam_version: str
    job_key: str
    qc: bool
    reported: tuple[str, ...]
    env: dict[str, str]
    dicom_seg: bool = False

    @property
    def version(self) -> str:
        return f"{self.localizer_version}|{self.sam_version}|{self.job_key}"


def labels_uri(out: str, scan_id: str) -> str:
    return join(out, "labels", f"{scan_id}.nii.gz")


def dicom_seg_uri(out: str, scan_id: str) -> str:
    return join(out, "dicom_seg", f"{scan_id}.dcm")


def part_uri(out: str, scan_id: str) -> str:
    return join(out, "prelabel", "parts", f"{scan_id}.parquet")


def index_uri(out: str) -> str:
    return join(out, "prelabel", "index.parquet")


def qc_uri(out: str, scan_id: str, label: int) -> str:
    return join(out, "qc", "prelabel", scan_id, f"{label}.png")


def default_report_uri(out: str) -> str:
    return join(out, "qc", "prelabel.html")


# -- rows -----------------------------------------------------------------------------------------


def row_status(status: str, n_voxels: int) -> str:
    """Index status of an :class:`~uae_ray.tasks.segment.OrganSegmentation`."""
    if status == "ok":
        return "ok" if n_voxels > 0 else "empty"
    return _STATUS.get(status, "not_localized")


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
        message = o.message or (f"{o.name}: segment-anything found nothing in its boxes" if status == "empty" else "")
        box = np.asarray(p.box_world, dtype=np.float64)
        rows.append({
            "scan_id": scan_id, "organ": o.name, "label": o.label, "status": status, "message": message or None,
            **{k: float(v) for k, v in zip(("xmin", "ymin", "zmin", "xmax", "ymax", "zmax"), box)},
            "voxels": int(o.n_voxels), "volume_ml": float(o.volume_ml), "n_slices": int(o.n_slices),
            "mask_uri": mask_uri, "dicom_seg_uri": seg_uri if status == "ok" else None,
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
        "scan_id": scan_id, "organ": organ, "label": k, "status": STATUS_ERROR, "message": error,
        "xmin": nan, "ymin": nan, "zmin": nan, "xmax": nan, "ymax": nan, "zmax": nan,
        "voxels": 0, "volume_ml": 0.0, "n_slices": 0, "mask_uri": None, "dicom_seg_uri": None,
        "localizer": settings.method,
        "boxes": settings.boxes, "localizer_version": settings.localizer_version,
        "sam_version": settings.sam_version, "seconds": 0.0,
    } for k, organ in enumerate(settings.organs, start=1)]


# -- the task -------------------------------------------------------------------------------------


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
    from uae_ray.volume import detect_modality

    segmenter, factory = models
    image = read_image_uri(source)
    modality = detect_modality(image, scan.uri, settings.modality)
    prepared = TargetSlices(image, modality, segmenter.config)
    prompts = localize_prompts(factory, settings.supports, image, prepared, settings.organs, settings.boxes,
                               modality)
    result = segment_prompts(segmenter, prepared, prompts)
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
    if not settings.dicom_seg or not any(o.status == "ok" and o.n_voxels > 0 for o in result.organs):
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


# -- the driver -----------------------------------------------------------------------------------


def _check_organs(names: Sequence[str], supports: Sequence) -> tuple[list, list[str], list[str]]:
    """Names the supports that lack an organ and the organs no support has.

    Returns:
        ``(supports with at least one organ, organs no support has, label files named)``.
    """
    missing = [o for o in names if not any(s.has(o) for s in supports)]
    reported = []
    for o in missing:
        reasons = "; ".join(s.missing_reason(o) for s in supports)
        logger.warning("%s: no support scan has this organ; its rows are marked missing_in_supports (%s)", o, reasons)
        reported.extend(s.spec.labels for s in supports)
    for support, line in partial_supports(supports, names):
        logger.warning("%s", line)
        reported.append(support.spec.labels)
    used = []
    for s in supports:
        if any(s.has(o) for o in names):
            used.append(s)
        else:
            logger.warning("support %s has none of the organs (%s); not used", s.name, ", ".join(names))
    return used, missing, sorted(set(reported))


def _job_key(supports: Sequence, names: Sequence[str], label_names: str | None, boxes: str, method: str,
             embedding_mode: str | None, modality: str | None, dicom_seg: bool = False) -> str:
    """Hash of what the results depend on besides the model versions, and of the index schema
    (a changed file under the same name needs ``force``)."""
    key = json.dumps({"supports": sorted(str(s.spec) for s in supports), "organs": list(names),
                      "label_names": label_names, "boxes": boxes, "method": method,
                      "embedding_mode": embedding_mode, "modality": modality, "dicom_seg": dicom_seg,
                      "schema": PRELABEL.metadata[SCHEMA_KEY].decode()}, sort_keys=True)
    return uri_hash(key, 12)


def _models_on_driver(supports, method, triton_url, checkpoint, medlam_checkpoint, embedding_mode,
                      sam_checkpoint, sam_kind) -> tuple[str, str, dict]:
    """``(localizer version, SAM version, support maps)``: the models loaded once here and the
    supports embedded once (embedding localizer).

    Raises:
        PrelabelError: a model cannot be loaded or reached.
    """
    from uae_ray.api.models import make_localizer_factory, make_segmenter

    try:
        sam_version = make_segmenter(triton_url, sam_checkpoint, sam_kind).version
        localizer = make_localizer_factory(method, triton_url, checkpoint, medlam_checkpoint,
                                           embedding_mode)(supports)
        localizer_version = str(localizer.model_version)
    except (OSError, ValueError, RuntimeError) as e:
        raise PrelabelError(one_line(e)) from e
    maps: dict = {}
    if method == "embedding":
        from uae_ray.matching import embed_image

        t0 = time.perf_counter()
        for s in supports:
            if s.spec.image not in maps:
                maps[s.spec.image] = embed_image(s.image, localizer.embedder, s.modality)
        logger.info("embedded %d support image(s) once for every scan in %.1f s", len(maps), time.perf_counter() - t0)
    return localizer_version, sam_version, maps


def run_cohort_prelabel(
    archive: str,
    supports: Sequence[str],
    organs: str,
    out: str,
    triton_url: str | None = None,
    ray_address: str | None = None,
    label_names: str | None = None,
    boxes: str = "spl",
    method: str = "embedding",
    embedding_mode: str | None = None,
    checkpoint: str | None = None,
    medlam_checkpoint: str | None = None,
    sam_checkpoint: str | None = None,
    sam_kind: str | None = None,
    modality: str | None = None,
    force: bool = False,
    limit: int | None = None,
    report: str | None = None,
    qc: bool = True,
    dicom_seg: bool = False,
) -> dict[str, Any]:
    """Pre-labels every scan under ``archive`` that is not done yet (see the module docstring).

    Args:
        supports: ``IMAGE:LABELS`` strings (local paths or s3:// URIs).
        organs: comma-separated organ names; label k = the k-th.
        boxes / method / embedding_mode / checkpoint / medlam_checkpoint / sam_checkpoint /
            sam_kind / modality / label_names: as ``uae-ray segment``.
        report: the QC report's path or URI (default ``<out>/qc/prelabel.html``).
        qc: write the QC images and report.
        dicom_seg: also write a DICOM SEG for every DICOM series scan.

    Returns:
        A summary dict (counts, versions, the index and report URIs).

    Raises:
        PrelabelError: nothing can be done (no organ, no usable support, no support with any of
            the organs, a model that cannot be loaded); nothing is written then.
    """
    from uae_ray.api.inputs import load_supports, parse_organs

    if boxes not in ("spl", "wpl"):
        raise PrelabelError(f"unknown box mode {boxes!r}; expected spl or wpl")
    names = parse_organs(organs)
    if not names:
        raise PrelabelError("--organs: no organ named")
    loaded, n_bad = load_supports(list(supports), label_names, modality)
    if not loaded:
        raise PrelabelError(f"no usable support scan ({len(supports)} given)")
    used, missing, reported = _check_organs(names, loaded)
    if not used:
        raise PrelabelError(f"no support scan has any of the organs {', '.join(names)}")
    loc_version, sam_version, maps = _models_on_driver(used, method, triton_url, checkpoint,
                                                       medlam_checkpoint, embedding_mode, sam_checkpoint, sam_kind)
    settings = PrelabelSettings(
        out=out, manifest=join(out, PRELABEL_MANIFEST), organs=tuple(names), supports=tuple(used), support_maps=maps,
        boxes=boxes, method=method, embedding_mode=embedding_mode, triton_url=triton_url, checkpoint=checkpoint,
        medlam_checkpoint=medlam_checkpoint, sam_checkpoint=sam_checkpoint, sam_kind=sam_kind, modality=modality,
        localizer_version=loc_version, sam_version=sam_version,
        job_key=_job_key(used, names, label_names, boxes, method, embedding_mode, modality, dicom_seg), qc=qc,
        reported=tuple(reported), env=worker_env(), dicom_seg=dicom_seg,
    )
    scans = discover_scans(archive)[:limit] if limit else discover_scans(archive)
    manifest = Manifest(settings.manifest)
    todo = pending_scans(scans, manifest, settings.version, force)
    logger.info("cohort prelabel: %d scans under %s, %d to do; organs %s; %d support(s), %s boxes, %s localizer "
                "%s, segment-anything %s", len(scans), archive, len(todo), ",".join(names), len(used), boxes.upper(),
                method, loc_version, sam_version)
    summary: dict[str, Any] = {
        "scans": len(scans), "skipped": len(scans) - len(todo), "organs": list(names), "missing_in_supports": missing,
        "supports": len(used), "supports_failed": n_bad, "boxes": boxes, "localizer": method,
        "localizer_version": loc_version, "sam_version": sam_version,
    }
    if todo:
        init_ray(ray_address)
        fan_out_actors(PrelabelWorker, (settings,), todo, add_record(manifest), "cohort prelabel")
    manifest.save()

    done = manifest.done_ids(settings.version)
    tables = []
    for s in scans:
        if s.scan_id in done:
            tables.append(read_table(part_uri(out, s.scan_id)))
        else:
            rec = manifest.get(s.scan_id)
            error = rec.error if rec is not None and rec.error else "not processed"
            tables.append(prelabel_table(error_rows(s.scan_id, error, settings, s.uri)))
    table = pa.concat_tables(tables) if tables else PRELABEL.empty_table()
    index = index_uri(out)
    write_table_atomic(table, index)
    statuses = table.column("status").to_pylist()
    n_done = sum(s.scan_id in done for s in scans)
    summary.update(done=n_done, failed=len(scans) - n_done, index_uri=index, rows=table.num_rows,
                   status_counts={k: statuses.count(k) for k in sorted(set(statuses))})
    if qc:
        summary["report_uri"] = write_report(report or default_report_uri(out), table, out)
    return summary


def write_report(report: str, table: pa.Table, out: str) -> str:
    """Writes the QC report (local path or s3:// URI) from the index and the workers' PNGs."""
    from uae_ray.report.masks import prelabel_report

    rows = table.to_pylist()
    scan_ids = list(dict.fromkeys(r["scan_id"] for r in rows))
    shown = set(scan_ids[:REPORT_MAX_SCANS])
    rows = [r for r in rows if r["scan_id"] in shown]
    images = {}
    for r in rows:
        if r["status"] == "ok":
            uri = qc_uri(out, r["scan_id"], int(r["label"]))
            if exists(uri):
                images[(r["scan_id"], int(r["label"]))] = read_bytes(uri)
    note = ("" if len(scan_ids) <= REPORT_MAX_SCANS else
            f"<p>Showing the first {REPORT_MAX_SCANS} of {len(scan_ids)} scans; the index has every row.</p>")
    if is_s3(report):
        with tempfile.TemporaryDirectory(prefix="uae-ray-qc-") as d:
            local = os.path.join(d, "prelabel.html")
            prelabel_report(local, rows, images, note=note)
            upload_file(local, report)
    else:
        prelabel_report(report, rows, images, note=note)
    logger.info("wrote QC report %s (%d scans, %d images)", report, len(shown), len(images))
    return report


__all__ = [
    "PRELABEL_MANIFEST",
    "PrelabelError",
    "PrelabelSettings",
    "default_report_uri",
    "error_rows",
    "index_uri",
    "labels_uri",
    "organ_rows",
    "part_uri",
    "prelabel_scan",
    "prelabel_table",
    "qc_uri",
    "row_status",
    "run_cohort_prelabel",
    "write_qc_images",
    "write_report",
]
