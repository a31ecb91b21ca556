"""``uae-ray cohort landmarks``: a template's named points found in every scan of an archive,
matched against the stored embeddings (scans without embeddings are embedded first).

Layout under ``out``:
  ``references/<key>.parquet``          the template's embedding maps (fixed-point matching
                                         matches back into the template, so workers read them;
                                         a re-run with the same template and model reads them)
  ``landmarks/parts/<scan_id>.parquet``  per-scan detections (written by the workers)
  ``landmarks/detections.parquet``      all detections of the archive (written by the driver)
  ``manifests/landmarks``               status per scan, keyed by model version + job key
The job key hashes the template, the points and the method, so a new template, point set or
method redoes the work.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from uae_ray.cohort.embed import add_record, archive_scans, embed_scans, pending_scans, persist_record
from uae_ray.cohort.maps_io import embeddings_uri, read_maps
from uae_ray.cohort.runner import apply_worker_env, fan_out, init_ray, one_line, worker_env
from uae_ray.serving import get_embedder
from uae_ray.storage import DETECTIONS, Manifest, ScanRef, join, read_files, write_table_atomic
from uae_ray.storage.images import read_image_uri
from uae_ray.api.inputs import read_points
from uae_ray.tasks.points_io import NamedPoints

if TYPE_CHECKING:
    from uae_ray.matching import Embedder, EmbeddingMaps, MatchResult

logger = logging.getLogger(__name__)

LANDMARKS_MANIFEST = "manifests/landmarks"


@dataclass(frozen=True)
class TemplateQuery:
    """The template's points and where its embedding maps are stored (small; shipped to every task)."""

    names: tuple[str, ...]
    xyz: np.ndarray
    maps_uri: str
    method: str
    model_version: str
    job_key: str


def template_maps(template: str, points: NamedPoints, embedder: "Embedder", out: str) -> tuple["EmbeddingMaps", str]:
    """``(maps, uri)`` of the template, after checking that every point lies inside it: embedded,
    or read back from ``<out>/references/`` (:mod:`uae_ray.cohort.references`).

    Raises:
        ValueError: a point lies outside the template image (see
            :func:`~uae_ray.tasks.landmarks.check_points_inside`); nothing is embedded.
    """
    from uae_ray.cohort.references import reference_maps
    from uae_ray.tasks.landmarks import check_points_inside
    from uae_ray.volume import detect_modality

    image = read_image_uri(template)
    check_points_inside(points, image, "template")
    return reference_maps(template, image, embedder, detect_modality(image, template), out)


def build_query(
    template: str, points: NamedPoints, references: str, method: str, triton_url: str | None, checkpoint: str | None
) -> TemplateQuery:
    """The template's query (its maps from :func:`template_maps` under ``references``, with the
    same model as the cohort).

    Raises:
        ValueError: a point lies outside the template image; nothing is embedded.
    """
    maps, maps_uri = template_maps(template, points, get_embedder(triton_url, checkpoint=checkpoint), references)
    digest = hashlib.sha256(
        template.encode() + points.xyz.tobytes() + "\n".join(points.names).encode() + method.encode()
    ).hexdigest()[:12]
    return TemplateQuery(points.names, points.xyz, maps_uri, method, maps.model_version, digest)


@functools.lru_cache(maxsize=2)
def _template_maps(uri: str) -> "EmbeddingMaps":
    """The template's maps, read once per worker process (Ray reuses workers across tasks)."""
    return read_maps(uri)


def part_uri(out: str, scan_id: str) -> str:
    return join(out, "landmarks", "parts", f"{scan_id}.parquet")


def detect_scan(
    scan: ScanRef, query: TemplateQuery, out: str, embeddings: str, manifest_uri: str, env: dict[str, str]
) -> dict[str, Any]:
    """Matches the template's points in one scan's stored embeddings; writes its part table."""
    apply_worker_env(env)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"scan_id": scan.scan_id, "uri": scan.uri}
    try:
        from uae_ray.matching import find_points

        maps = read_maps(embeddings_uri(embeddings, scan.scan_id))
        if maps.model_version != query.model_version:
            raise ValueError(f"stored embeddings are of model {maps.model_version}, template of {query.model_version}")
        result = find_points(_template_maps(query.maps_uri), query.xyz, maps, query.method)
        table = detections_table(scan.scan_id, query.names, result, query.method, query.model_version)
        uri = part_uri(out, scan.scan_id)
        write_table_atomic(table, uri)
        record.update(status="ok", model_version=f"{query.model_version}|{query.job_key}", output_uri=uri,
                      n_bytes=table.nbytes)
    except Exception as e:
        record.update(status="error", error=one_line(e))
    record["seconds"] = time.perf_counter() - t0
    return persist_record(manifest_uri, record)


def detections_table(
    scan_id: str, names: tuple[str, ...], result: MatchResult, method: str, model_version: str
) -> pa.Table:
    """Rows of :data:`~uae_ray.storage.DETECTIONS` for one scan."""
    n = len(names)
    xyz = result.points
    return pa.table(
        {
            "scan_id": [scan_id] * n,
            "name": list(names),
            "x": xyz[:, 0].astype(float),
            "y": xyz[:, 1].astype(float),
            "z": xyz[:, 2].astype(float),
            "score": np.asarray(result.scores, dtype=np.float32),
            "found": np.asarray(result.found, dtype=bool),
            "method": [method] * n,
            "model_version": [model_version] * n,
        },
        schema=DETECTIONS,
    )


def run_cohort_landmarks(
    archive: str,
    out: str,
    template: str,
    points_csv: str,
    triton_url: str | None,
    embeddings: str | None = None,
    ray_address: str | None = None,
    checkpoint: str | None = None,
    force: bool = False,
    limit: int | None = None,
    method: str = "fixed-point",
    references: str | None = None,
) -> dict[str, Any]:
    """Detects the template's points in every scan of ``archive`` with ``method`` (``nn`` or
    ``fixed-point``); returns a summary. ``references``: the prefix whose ``references/`` keeps
    the template's maps (default ``out``)."""
    embeddings = embeddings or out
    points = read_points(points_csv)
    scans = archive_scans(archive, limit)
    query = build_query(template, points, references or out, method, triton_url, checkpoint)
    logger.info("cohort landmarks: %d points, %d scans, model %s", len(points), len(scans), query.model_version)
    summary: dict[str, Any] = {"scans": len(scans), "points": len(points), "model_version": query.model_version}

    embedded, embed_manifest, n_embedded = embed_scans(scans, embeddings, query.model_version, triton_url, checkpoint,
                                                       ray_address)
    summary["scans_embedded"] = n_embedded
    failed_embed = [s for s in scans if s.scan_id not in embedded]

    manifest = Manifest(join(out, LANDMARKS_MANIFEST))
    job_version = f"{query.model_version}|{query.job_key}"
    for s in failed_embed:
        previous = embed_manifest.get(s.scan_id)
        error = previous.error if previous and previous.error else "no embeddings"
        manifest.record(s.scan_id, s.uri, "error", f"embedding failed: {error}", job_version)
    ready = [s for s in scans if s.scan_id in embedded]
    todo = pending_scans(ready, manifest, job_version, force)
    summary["skipped"] = len(ready) - len(todo)
    if todo:
        init_ray(ray_address)
        args = (query, out, embeddings, manifest.uri, worker_env())
        fan_out(detect_scan, todo, args, add_record(manifest), "cohort landmarks")
    manifest.save()

    done = manifest.done_ids(job_version)
    parts = [part_uri(out, s.scan_id) for s in scans if s.scan_id in done]
    table = read_files(parts, DETECTIONS)
    detections = join(out, "landmarks", "detections.parquet")
    write_table_atomic(table, detections)
    summary.update(done=len(parts), failed=len(scans) - len(parts), detections_uri=detections, rows=table.num_rows)
    return summary
