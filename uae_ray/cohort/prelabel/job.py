"""The driver of ``cohort prelabel``: check organs and supports, load the models once, fan the scans out
to an actor pool, gather the index, write the QC report."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any, Sequence

import pyarrow as pa

from uae_ray.cohort.embed import add_record, archive_scans, pending_scans
from uae_ray.cohort.runner import fan_out_actors, init_ray, one_line, worker_env
from uae_ray.storage import (
    Manifest,
    exists,
    is_s3,
    join,
    read_bytes,
    read_table,
    upload_file,
    write_table_atomic,
)
from uae_ray.storage.schemas import PRELABEL, SCHEMA_KEY
from uae_ray.storage.uri import uri_hash
from uae_ray.tasks.support import partial_supports, probable_typos
from uae_ray.cohort.prelabel.rows import error_rows, prelabel_table
from uae_ray.cohort.prelabel.scan import PrelabelWorker
from uae_ray.cohort.prelabel.settings import (
    PRELABEL_MANIFEST,
    REPORT_MAX_SCANS,
    PrelabelError,
    PrelabelSettings,
    default_report_uri,
    index_uri,
    part_uri,
    qc_uri,
)

logger = logging.getLogger(__name__)


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
                      sam_checkpoint, sam_kind, out: str) -> tuple[str, str, dict]:
    """``(localizer version, SAM version, support maps)``: the models loaded once here and the
    supports embedded once (embedding localizer), or read back from ``<out>/references/`` where
    an earlier run with the same model stored them (:mod:`uae_ray.cohort.references`).

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
        from uae_ray.cohort.references import reference_maps

        t0 = time.perf_counter()
        for s in supports:
            if s.spec.image not in maps:
                maps[s.spec.image] = reference_maps(s.spec.image, s.image, localizer.embedder, s.modality, out)[0]
        logger.info("%d support image(s) embedded or read once for every scan in %.1f s", len(maps),
                    time.perf_counter() - t0)
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
    references: str | None = None,
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
        references: the prefix whose ``references/`` keeps the supports' maps (default ``out``).

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
    typos = probable_typos(loaded, names)
    if typos:
        raise PrelabelError("--organs " + "; ".join(typos))
    used, missing, reported = _check_organs(names, loaded)
    if not used:
        raise PrelabelError(f"no support scan has any of the organs {', '.join(names)}")
    loc_version, sam_version, maps = _models_on_driver(used, method, triton_url, checkpoint,
                                                       medlam_checkpoint, embedding_mode, sam_checkpoint, sam_kind,
                                                       references or out)
    settings = PrelabelSettings(
        out=out, manifest=join(out, PRELABEL_MANIFEST), organs=tuple(names), supports=tuple(used), support_maps=maps,
        boxes=boxes, method=method, embedding_mode=embedding_mode, triton_url=triton_url, checkpoint=checkpoint,
        medlam_checkpoint=medlam_checkpoint, sam_checkpoint=sam_checkpoint, sam_kind=sam_kind, modality=modality,
        localizer_version=loc_version, sam_version=sam_version,
        job_key=_job_key(used, names, label_names, boxes, method, embedding_mode, modality, dicom_seg), qc=qc,
        reported=tuple(reported), env=worker_env(), dicom_seg=dicom_seg,
    )
    scans = archive_scans(archive, limit)
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
        if r["status"] in ("ok", "low_confidence"):  # the masks: the low-confidence ones are the ones to look at
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


