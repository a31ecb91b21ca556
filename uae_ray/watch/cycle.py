"""One cycle of ``uae-ray watch`` over a DICOMweb PACS or an archive, and the ``--every`` loop.

A cycle, under the lease ``<out>/manifests/watch.lease`` (one watcher per output prefix):

1. **discover** the studies that became stable since the cursor (Orthanc's changes feed), or
   the scans of an archive source not yet indexed (:mod:`uae_ray.watch.archive`);
2. **fetch** each study's primary series into the watcher's archive, de-identified
   (:mod:`uae_ray.watch.materialize`); a study without a usable series is one error record
   (an archive's scans are not copied: the steps run on the archive);
3. **run the steps** of the pipeline through the cohort jobs (:mod:`uae_ray.watch.steps`),
   pairing each new study with the patient's prior;
4. **send back** (a PACS source) a DICOM SEG of the pre-labels and a DICOM SR of the found
   landmarks and tracked lesions with STOW-RS (:mod:`uae_ray.watch.send`);
5. record one manifest record per (study, step) in ``<out>/manifests/watch`` (id
   ``<study_key>.<step>``), write the HTML run report ``<out>/watch/reports/cycle-<n>.html``
   and, last, advance the cursor.

A cycle killed anywhere before 5 leaves the cursor where it was: the next one discovers the same
studies, finds their series stored, and the manifests skip every step already done, so the
tables end as those of an undisturbed run. A study whose every step failed is not retried by
later cycles (its errors are in the manifest and the report); ``--since 0`` replays the feed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uae_ray.cohort.lease import JobLease
from uae_ray.cohort.runner import one_line
from uae_ray.storage import Manifest, exists, join, read_table
from uae_ray.watch.cursor import read_cursor, write_cursor
from uae_ray.watch.dicomweb import DicomWebPacs, PacsError
from uae_ray.watch.index import prior_of, read_index, rebuild_index, write_index
from uae_ray.watch.materialize import materialize, primary_series, series_key, study_key
from uae_ray.watch.pipeline import Pipeline
from uae_ray.watch.steps import StepContext, StudyPair, found_points, run_steps

logger = logging.getLogger(__name__)

WATCH_MANIFEST = "manifests/watch"
#: Modalities of series that are not images to process (a study holding only these, such as
#: the SEG and SR a cycle stored, is passed over without an error).
DERIVED_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "REG", "DOC"})
CURSOR_KIND = "orthanc-changes"


class WatchError(RuntimeError):
    """A watch cycle that cannot run (a source without a changes feed, a cursor of another
    source); one line."""


@dataclass(frozen=True)
class WatchSettings:
    """What a cycle needs."""

    source: str
    out: str
    pipeline: Pipeline
    triton_url: str | None = None
    ray_address: str | None = None
    since: int | None = None


@dataclass
class CycleLog:
    """What the report shows: per study, what ran and how it ended."""

    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def step(self, key: str, step: str, status: str, error: str | None = None, **extra: Any) -> None:
        self.studies.setdefault(key, {"steps": {}})["steps"][step] = {"status": status, "error": error, **extra}


def _record(manifest: Manifest, log: CycleLog, key: str, step: str, uri: str, status: str,
            error: str | None = None, version: str | None = None, output: str | None = None) -> None:
    manifest.record(f"{key}.{step}", uri, status, error, version, output)
    log.step(key, step, status, error, output=output)


def _fetch(pacs: DicomWebPacs, ids: list[str], settings: WatchSettings, staging: Path, manifest: Manifest,
           log: CycleLog) -> list[dict]:
    """Materialises the primary series of each new study (Orthanc ids); returns their metas."""
    from uae_ray.volume import VolumeError

    p, out = settings.pipeline, settings.out
    index = read_index(out) or rebuild_index(out)
    metas = []
    for oid in ids:
        found = pacs.study(oid)
        if found is None:
            logger.info("PACS study %s is gone; skipped", oid)
            continue
        study, series = found
        key = study_key(study.study_uid)
        try:
            primary = primary_series(series, p.modalities, p.min_slices)
            if primary is None:
                if all(s.modality in DERIVED_MODALITIES for s in series):  # e.g. our own SEG / SR
                    logger.info("study %s: derived objects only (%s); nothing to do", key,
                                ", ".join(sorted({s.modality for s in series})))
                    continue
                _record(manifest, log, key, "fetch", f"study:{key}", "error",
                        f"no {'/'.join(p.modalities)} series with >= {p.min_slices} instances")
                continue
            m = materialize(pacs, study, primary, out, staging / series_key(primary.series_uid))
        except (VolumeError, ValueError) as e:
            _record(manifest, log, key, "fetch", f"study:{key}", "error", one_line(e))
            continue
        index[m.series_key] = m.meta
        write_index(out, index)
        _record(manifest, log, key, "fetch", m.image_uri, "ok", output=m.series_key)
        log.studies[key]["meta"] = m.meta
        metas.append(m.meta)
    return metas


def _status(manifests: dict[str, Manifest], manifest_uri: str, record_id: str) -> tuple | None:
    """``(status, error, version)`` of a record of a cohort job's manifest (loaded once)."""
    if manifest_uri not in manifests:
        manifests[manifest_uri] = Manifest(manifest_uri)
    rec = manifests[manifest_uri].get(record_id)
    return (rec.status, rec.error, rec.model_version) if rec else None


def _record_steps(ctx: StepContext, metas: list[dict], pairs: dict[str, StudyPair], manifest: Manifest,
                  log: CycleLog) -> None:
    """One record per (study, step) from the cohort jobs' manifests."""
    from uae_ray.cohort.embed import EMBED_MANIFEST
    from uae_ray.cohort.landmarks import LANDMARKS_MANIFEST
    from uae_ray.cohort.prelabel.settings import PRELABEL_MANIFEST
    from uae_ray.cohort.register import REGISTER_MANIFEST
    from uae_ray.cohort.track import TRACK_MANIFEST

    p, out = ctx.pipeline, ctx.out
    manifests: dict[str, Manifest] = {}
    for meta in metas:
        key, sid, uri = meta["study_key"], ctx.scan_id(meta), ctx.scan_uri(meta)
        sources = [("embed", join(out, EMBED_MANIFEST), sid)]
        sources += [(f"landmarks-{s.name}", join(ctx.landmarks_out(s.name), LANDMARKS_MANIFEST), sid) for s in p.landmarks]
        if p.prelabel is not None:
            sources.append(("prelabel", join(out, PRELABEL_MANIFEST), sid))
        pair = pairs.get(key)
        for step, manifest_uri in (("track", join(out, TRACK_MANIFEST)), ("register", join(out, REGISTER_MANIFEST))):
            if getattr(p, step) is None:
                continue
            if pair is None:
                log.step(key, step, "skipped", "no prior study of this patient")
            else:
                sources.append((step, manifest_uri, pair.pair_id(ctx)))
        for step, manifest_uri, record_id in sources:
            found = _status(manifests, manifest_uri, record_id)
            if found is None:
                if step == "track":
                    log.step(key, step, "skipped", "the prior study has no lesions")
                    continue
                found = ("error", "the step did not record this scan", None)
            _record(manifest, log, key, step, uri, found[0], found[1], found[2])


def _send(pacs: DicomWebPacs, ctx: StepContext, metas: list[dict], pairs: dict[str, StudyPair], staging: Path,
          manifest: Manifest, log: CycleLog, model_version: str) -> int:
    """SEG and SR of each new study to the PACS (once: a record ``ok`` is not sent again);
    returns the number of objects stored."""
    from uae_ray.cohort.prelabel.settings import labels_uri
    from uae_ray.watch.send import seg_dataset, source_datasets, sr_dataset

    p = ctx.pipeline
    sent = 0
    for meta in metas:
        key, sid = meta["study_key"], ctx.scan_id(meta)
        wanted = []
        if p.send_seg and p.prelabel is not None and log.studies[key]["steps"].get("prelabel", {}).get("status") == "ok":
            wanted.append("seg")
        points = found_points(ctx, meta, pairs.get(key)) if p.send_sr else []
        if points:
            wanted.append("sr")
        for what in wanted:
            done = manifest.get(f"{key}.{what}")
            if done is not None and done.status == "ok":
                log.step(key, what, "ok", output=done.output_uri)
                continue
            try:
                folder, datasets = source_datasets(pacs, meta, staging)
                if what == "seg":
                    organs = [o.strip() for o in p.prelabel.organs.split(",") if o.strip()]
                    ds = seg_dataset(labels_uri(ctx.out, sid), organs, folder, meta, model_version)
                else:
                    digest = hashlib.sha256(json.dumps(points, sort_keys=True).encode()).hexdigest()[:16]
                    ds = sr_dataset(points, datasets, meta, model_version, digest)
                pacs.store([ds])
                sent += 1
            except PacsError:
                raise
            except Exception as e:  # noqa: BLE001 - a SEG / SR that cannot be built is this study's error only
                _record(manifest, log, key, what, ctx.scan_uri(meta), "error", one_line(e), model_version)
                continue
            _record(manifest, log, key, what, ctx.scan_uri(meta), "ok", None, model_version, str(ds.SOPInstanceUID))
    return sent


def _index_archive(settings: WatchSettings, manifest: Manifest, log: CycleLog) -> tuple[list[dict], int, int]:
    """The new scans of an archive source, indexed (:mod:`uae_ray.watch.archive`); ``(metas of
    those indexed, new scans, scans listed)``."""
    from uae_ray.watch.archive import INDEX_STEP, archive_meta, new_scans

    index = read_index(settings.out)
    scans, listed = new_scans(settings.source, manifest, replay=settings.since == 0)
    metas = []
    for scan in scans:
        try:
            meta = archive_meta(scan, settings.source)
        except (OSError, ValueError) as e:  # e.g. a series still being uploaded: tried again next cycle
            _record(manifest, log, scan.scan_id, INDEX_STEP, scan.uri, "error", one_line(e))
            continue
        index[meta["series_key"]] = meta
        write_index(settings.out, index)
        _record(manifest, log, scan.scan_id, INDEX_STEP, scan.uri, "ok", output=meta["rel"])
        log.studies[scan.scan_id]["meta"] = meta
        metas.append(meta)
    return metas, len(scans), listed


def _discover(settings: WatchSettings, pacs: DicomWebPacs | None, position: int, staging: Path,
              manifest: Manifest, log: CycleLog) -> tuple[list[dict], int, int]:
    """``(metas of the new studies or scans, studies found, new cursor position)``."""
    if pacs is None:
        clock = time.perf_counter()
        metas, found, listed = _index_archive(settings, manifest, log)
        log.seconds["discover"] = time.perf_counter() - clock
        logger.info("watch: %d new scans of %d under %s", found, listed, settings.source)
        return metas, found, listed
    clock = time.perf_counter()
    ids, last = pacs.stable_studies_since(position)
    log.seconds["discover"] = time.perf_counter() - clock
    logger.info("watch: %d new stable studies since change %d (feed at %d)", len(ids), position, last)
    clock = time.perf_counter()
    metas = _fetch(pacs, ids, settings, staging, manifest, log)
    log.seconds["fetch"] = time.perf_counter() - clock
    return metas, len(ids), last


def run_cycle(settings: WatchSettings) -> dict[str, Any]:
    """One watch cycle (module docstring); returns its summary.

    Raises:
        WatchError: The source has no changes feed, or the cursor is of another source.
        PacsError: The PACS cannot be reached (nothing is lost; the cursor is not advanced).
        LeaseHeldError: Another watcher holds the output prefix.
        ServiceUnreachableError / StorageError: a service of the cluster stayed down.
    """
    from uae_ray.serving import get_embedder
    from uae_ray.watch.archive import CURSOR_KIND as ARCHIVE_KIND
    from uae_ray.watch.cursor import CursorError
    from uae_ray.watch.materialize import series_root
    from uae_ray.watch.report import write_report

    t0 = time.perf_counter()
    out, p = settings.out, settings.pipeline
    pacs = DicomWebPacs.from_source(settings.source) if settings.source.startswith("dicomweb+") else None
    with JobLease(out, "watch"):
        if pacs is None and not exists(settings.source):
            raise WatchError(f"{settings.source}: no such archive (an s3:// prefix or a folder of scans)")
        if pacs is not None and not pacs.is_orthanc():
            raise WatchError(f"{pacs.url}: discovery reads Orthanc's changes feed, which this DICOMweb server "
                             "does not offer (generic QIDO-RS discovery is not built yet)")
        source_name = pacs.url if pacs is not None else settings.source
        try:
            cursor = read_cursor(out, source_name, CURSOR_KIND if pacs is not None else ARCHIVE_KIND)
        except CursorError as e:
            raise WatchError(str(e)) from None
        position = cursor.position if settings.since is None else int(settings.since)
        log = CycleLog()
        manifest = Manifest(join(out, WATCH_MANIFEST))
        archive = series_root(out) if pacs is not None else settings.source
        ctx = StepContext(out, p, settings.triton_url, settings.ray_address, archive)
        pairs: dict[str, StudyPair] = {}
        summary: dict[str, Any] = {"source": source_name, "since": position, "cycle": cursor.cycle + 1, "sent": 0}
        with tempfile.TemporaryDirectory(prefix="uae-ray-watch-") as tmp:
            staging = Path(tmp)
            metas, found, last = _discover(settings, pacs, position, staging, manifest, log)
            summary.update(studies=found, feed_last=last)
            manifest.save()
            if metas:
                index = read_index(out)
                pairs = {m["study_key"]: StudyPair(prior, m) for m in metas
                         if p.pairs and (prior := prior_of(m, index)) is not None}
                clock = time.perf_counter()
                summary["steps"] = run_steps(ctx, list(pairs.values()))
                log.seconds["steps"] = time.perf_counter() - clock
                _record_steps(ctx, metas, pairs, manifest, log)
                if pacs is not None:
                    model_version = get_embedder(settings.triton_url, checkpoint=p.checkpoint).version
                    clock = time.perf_counter()
                    summary["sent"] = _send(pacs, ctx, metas, pairs, staging, manifest, log, model_version)
                    log.seconds["send"] = time.perf_counter() - clock
            manifest.save()
        summary.update(processed=len(metas), paired=len(pairs),
                       seconds={k: round(v, 3) for k, v in log.seconds.items()},
                       failed=sum(any(s["status"] == "error" for s in st["steps"].values())
                                  for st in log.studies.values()))
        summary["report"] = write_report(out, summary, log, ctx, pairs)
        write_cursor(out, cursor, last)
        summary["wall_s"] = round(time.perf_counter() - t0, 3)
    return summary


def watch_every(settings: WatchSettings, every_s: float, cycles: int | None = None) -> None:
    """Runs a cycle every ``every_s`` seconds (from the start of one to the next; a cycle longer
    than that is followed at once), ``cycles`` times or until interrupted. A cycle that fails
    on an unreachable service is logged and the next one tries again."""
    from uae_ray.cohort.runner import ServiceUnreachableError

    n = 0
    while cycles is None or n < cycles:
        start = time.monotonic()
        try:
            summary = run_cycle(settings)
            logger.info("watch cycle %d: %d new studies, %d processed, %d with errors (%s)", summary["cycle"],
                        summary["studies"], summary["processed"], summary["failed"], summary["report"])
        except (PacsError, ServiceUnreachableError) as e:
            logger.error("watch cycle failed, retrying at the next one: %s", one_line(e))
        n += 1
        if cycles is not None and n >= cycles:
            break
        time.sleep(max(0.0, every_s - (time.monotonic() - start)))
