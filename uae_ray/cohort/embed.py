"""``uae-ray cohort embed``: a pool of Ray actors (:class:`EmbedWorker`, the model or the
Triton connection held once per actor) that each take one scan at a time: read from object
storage, prepare (resample, normalise), embed, write the embedding maps as Parquet
(``<out>/embeddings/<scan_id>.parquet``); the seconds of each stage are summed in the summary.

Re-running skips the scans whose manifest record is ``ok`` for the same model version; a scan
that fails is recorded with its one-line error and the others go on; a worker that dies has its
scan run again; a service that stays down stops the job (see :mod:`uae_ray.cohort.runner`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from uae_ray.cohort.maps_io import DEFAULT_TIER, check_tier, embeddings_uri, write_maps
from uae_ray.cohort.runner import (DrainStats, StageClock, apply_worker_env, fan_out_actors, init_ray, one_line,
                                   unreachable, worker_env)
from uae_ray.serving import get_embedder
from uae_ray.storage import Manifest, ManifestRecord, ScanRef, discover_scans, exists, join, write_record
from uae_ray.storage.images import read_image_uri

logger = logging.getLogger(__name__)

EMBED_MANIFEST = "manifests/embed"


@dataclass(frozen=True)
class EmbedSettings:
    """What every embed task needs (shared with the workers through the object store)."""

    out: str
    manifest: str
    triton_url: str | None
    checkpoint: str | None
    env: dict[str, str]
    tier: str = DEFAULT_TIER


def embed_scan(scan: ScanRef, settings: EmbedSettings) -> dict[str, Any]:
    """Embeds one scan and writes its Parquet file. Never raises: returns the manifest record
    (with ``stages``: seconds per stage, ``retries``: service retries, and ``unreachable`` when
    a service could not be reached)."""
    apply_worker_env(settings.env)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"scan_id": scan.scan_id, "uri": scan.uri}
    clock = StageClock()
    embedder, retries_before = None, 0
    extra: dict[str, Any] = {}
    try:
        from uae_ray.matching import embed_prepared, prepare_for
        from uae_ray.volume import detect_modality

        embedder = get_embedder(settings.triton_url, checkpoint=settings.checkpoint)
        retries_before = getattr(embedder, "retries_done", 0)
        with clock("read"):
            image = read_image_uri(scan.uri)
        with clock("prepare"):
            prepared = prepare_for(image, embedder, detect_modality(image, scan.uri))
        with clock("embed"):
            maps = embed_prepared(prepared, embedder)
        uri = embeddings_uri(settings.out, scan.scan_id)
        with clock("write"):
            n_bytes = write_maps(uri, scan.scan_id, maps, settings.tier)
        record.update(status="ok", model_version=maps.model_version, output_uri=uri, n_bytes=n_bytes)
    except Exception as e:  # recorded per scan; the job goes on
        record.update(status="error", error=one_line(e))
        extra["unreachable"] = unreachable(e)
    record["seconds"] = time.perf_counter() - t0
    extra.update(stages=clock.seconds, retries=getattr(embedder, "retries_done", 0) - retries_before)
    try:
        return {**persist_record(settings.manifest, record), **extra}
    except Exception as e:  # the record cannot be stored (S3 down): the driver still gets it
        why = unreachable(e)
        extra["unreachable"] = extra.get("unreachable") or why
        if record["status"] == "ok":
            record.update(status="error", error=f"{scan.uri}: manifest record not stored: {one_line(e)}")
        return {**record, **extra}


class EmbedWorker:
    """The state of one embed actor: the settings (and, through :func:`get_embedder`'s cache,
    the model or the Triton connection, loaded on the first scan); results name its node."""

    def __init__(self, settings: EmbedSettings) -> None:
        import ray

        self.settings = settings
        self.node = ray.get_runtime_context().get_node_id()

    def run(self, scan: ScanRef) -> dict[str, Any]:
        return {**embed_scan(scan, self.settings), "node": self.node}


def embed_pool(scans: list[ScanRef], settings: EmbedSettings, manifest: Manifest, workers: int | None = None,
               stats: DrainStats | None = None):
    """Runs :func:`embed_scan` over ``scans`` on a pool of :class:`EmbedWorker` actors (``workers``,
    default one per free CPU), recording into ``manifest``. An in-process model on a cluster
    with GPUs gets one GPU per actor. Returns the :class:`~uae_ray.cohort.runner.Progress`."""
    import ray

    num_gpus = 1.0 if not settings.triton_url and ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
    return fan_out_actors(EmbedWorker, (settings,), scans, add_record(manifest), "cohort embed",
                          num_gpus=num_gpus, n_actors=workers, stats=stats)


def persist_record(manifest_uri: str, record: dict[str, Any]) -> dict[str, Any]:
    """Writes a worker's manifest record file (so it survives a driver crash); returns it."""
    rec = ManifestRecord(**record)
    write_record(manifest_uri, rec)
    return {"record": rec, **record}


#: The driver saves the manifest snapshot at most this often while a job runs (and at the end).
SAVE_EVERY_S = 60.0


def add_record(manifest: Manifest, save_every_s: float = SAVE_EVERY_S):
    """The driver's callback: merge a worker's record (or a died task's error) into the manifest,
    and save the snapshot every ``save_every_s`` seconds, so a driver killed mid-job leaves a
    snapshot at most that old (the workers' per-scan record files hold the rest)."""
    last_save = [time.monotonic()]

    def on_result(result: dict[str, Any]) -> None:
        rec = result.get("record")
        if rec is None:
            rec = ManifestRecord(result["scan_id"], result.get("uri", ""), result["status"], result.get("error"))
        manifest.add(rec)
        if time.monotonic() - last_save[0] >= save_every_s:
            manifest.save(compact=False)
            last_save[0] = time.monotonic()

    return on_result


def pending_scans(scans: list[ScanRef], manifest: Manifest, model_version: str, force: bool) -> list[ScanRef]:
    """The scans still to do: all with ``force``, else those not ``ok`` for ``model_version``."""
    if force:
        return list(scans)
    done = manifest.done_ids(model_version)
    return [s for s in scans if s.scan_id not in done]


def embed_scans(scans: list[ScanRef], embeddings: str, model_version: str, triton_url: str | None,
                checkpoint: str | None, ray_address: str | None) -> tuple[set[str], Manifest, int]:
    """Embeds the scans that lack stored embeddings of ``model_version`` (``cohort embed``'s
    task, its manifest under ``embeddings``).

    Returns:
        ``(ids of the scans that have them now, the embed manifest, number embedded now)``.
    """
    embed_manifest = Manifest(join(embeddings, EMBED_MANIFEST))
    embedded = embed_manifest.done_ids(model_version)
    to_embed = [s for s in scans if s.scan_id not in embedded]
    if to_embed:
        init_ray(ray_address)
        logger.info("embedding %d of %d scans without stored embeddings first", len(to_embed), len(scans))
        embed_settings = EmbedSettings(embeddings, embed_manifest.uri, triton_url, checkpoint, worker_env())
        embed_pool(to_embed, embed_settings, embed_manifest)
        embed_manifest.save()
        embedded = embed_manifest.done_ids(model_version)
    return set(embedded), embed_manifest, len(to_embed)


class CohortInputError(ValueError):
    """A cohort job with nothing to work on (e.g. an archive without scans); one line."""


def archive_scans(archive: str, limit: int | None = None) -> list[ScanRef]:
    """The scans of an archive (the first ``limit``), or a one-line error when there are none:
    a mistyped ``--archive`` must not run to exit 0 with an empty manifest.

    Raises:
        CohortInputError: the folder / prefix does not exist or holds no scan.
        StorageError: S3 cannot be reached (the message names the endpoint).
    """
    scans = discover_scans(archive)
    if not scans:
        why = "no image files (NIfTI, NRRD, MHA, DICOM) below it" if exists(archive) else "no such folder or prefix"
        raise CohortInputError(f"{archive}: no scans found ({why})")
    return scans[:limit] if limit else scans


def run_cohort_embed(
    archive: str,
    out: str,
    triton_url: str | None,
    ray_address: str | None = None,
    checkpoint: str | None = None,
    force: bool = False,
    limit: int | None = None,
    tier: str = DEFAULT_TIER,
    workers: int | None = None,
) -> dict[str, Any]:
    """Embeds every scan under ``archive`` that is not done yet, stored in storage ``tier``
    (see :mod:`uae_ray.cohort.maps_io`), on ``workers`` actors (default: one per free CPU).

    Returns:
        A summary dict: ``scans``, ``skipped``, ``done``, ``failed``, ``model_version``,
        ``storage_tier``, ``workers``, ``wall_s``, ``scans_per_s``, ``stage_seconds`` (summed
        over scans), ``retries`` (service retries), ``resubmitted`` (scans run again after
        their worker died) and ``per_node`` (scans finished per Ray node id, first 12 hex).

    Raises:
        ServiceUnreachableError: S3 or Triton stayed down; what finished is kept.
    """
    check_tier(tier)
    scans = archive_scans(archive, limit)
    model_version = get_embedder(triton_url, checkpoint=checkpoint).version
    manifest = Manifest(join(out, EMBED_MANIFEST))
    todo = pending_scans(scans, manifest, model_version, force)
    logger.info("cohort embed: %d scans under %s, %d to do (model %s)", len(scans), archive, len(todo), model_version)
    summary: dict[str, Any] = {"scans": len(scans), "skipped": len(scans) - len(todo), "model_version": model_version,
                               "storage_tier": tier}
    if not todo:
        return {**summary, "done": 0, "failed": 0}
    init_ray(ray_address)
    settings = EmbedSettings(out, manifest.uri, triton_url, checkpoint, worker_env(), tier)
    stats = DrainStats()
    t0 = time.perf_counter()
    try:
        progress = embed_pool(todo, settings, manifest, workers, stats)
    except BaseException:
        _save_if_possible(manifest)
        raise
    manifest.save()
    wall = time.perf_counter() - t0
    summary.update(done=progress.done - progress.failed, failed=progress.failed, workers=stats.workers,
                   wall_s=round(wall, 3), scans_per_s=round(progress.done / max(wall, 1e-9), 4),
                   stage_seconds={k: round(v, 3) for k, v in (stats.stage_seconds or {}).items()},
                   retries=stats.retries, resubmitted=stats.resubmitted,
                   per_node={node[:12]: n for node, n in sorted(stats.per_node.items())})
    return summary


def _save_if_possible(manifest: Manifest) -> None:
    """Saves the manifest snapshot of a job that stopped; when storage is down, says so and
    leaves the per-scan record files (already stored) for the next run to fold in."""
    try:
        manifest.save()
    except Exception as e:
        logger.error("manifest %s not saved (%s); the next run folds in the per-scan records", manifest.uri,
                     one_line(e))
