"""``uae-ray cohort embed``: one Ray task per scan: read from object storage, normalise, embed
through Triton, write the embedding maps as Parquet (``<out>/embeddings/<scan_id>.parquet``).

Re-running skips the scans whose manifest record is ``ok`` for the same model version; a scan
that fails is recorded with its one-line error and the others go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from uae_ray.cohort.maps_io import DEFAULT_TIER, check_tier, embeddings_uri, write_maps
from uae_ray.cohort.runner import apply_worker_env, fan_out, init_ray, one_line, worker_env
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
    """Embeds one scan and writes its Parquet file. Never raises: returns a manifest record."""
    apply_worker_env(settings.env)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"scan_id": scan.scan_id, "uri": scan.uri}
    try:
        from uae_ray.matching import embed_image
        from uae_ray.volume import detect_modality

        embedder = get_embedder(settings.triton_url, checkpoint=settings.checkpoint)
        image = read_image_uri(scan.uri)
        maps = embed_image(image, embedder, detect_modality(image, scan.uri))
        uri = embeddings_uri(settings.out, scan.scan_id)
        n_bytes = write_maps(uri, scan.scan_id, maps, settings.tier)
        record.update(status="ok", model_version=maps.model_version, output_uri=uri, n_bytes=n_bytes)
    except Exception as e:  # recorded per scan; the job goes on
        record.update(status="error", error=one_line(e))
    record["seconds"] = time.perf_counter() - t0
    return persist_record(settings.manifest, record)


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
        fan_out(embed_scan, to_embed, (embed_settings,), add_record(embed_manifest), "cohort embed")
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
) -> dict[str, Any]:
    """Embeds every scan under ``archive`` that is not done yet, stored in storage ``tier``
    (see :mod:`uae_ray.cohort.maps_io`). Returns a summary dict."""
    check_tier(tier)
    scans = archive_scans(archive, limit)
    model_version = get_embedder(triton_url, checkpoint=checkpoint).version
    manifest = Manifest(join(out, EMBED_MANIFEST))
    todo = pending_scans(scans, manifest, model_version, force)
    logger.info("cohort embed: %d scans under %s, %d to do (model %s)", len(scans), archive, len(todo), model_version)
    summary: dict[str, Any] = {"scans": len(scans), "skipped": len(scans) - len(todo), "model_version": model_version,
                               "storage_tier": tier}
    if todo:
        init_ray(ray_address)
        settings = EmbedSettings(out, manifest.uri, triton_url, checkpoint, worker_env(), tier)
        progress = fan_out(embed_scan, todo, (settings,), add_record(manifest), "cohort embed")
        manifest.save()
        summary.update(done=progress.done - progress.failed, failed=progress.failed)
    else:
        summary.update(done=0, failed=0)
    return summary
