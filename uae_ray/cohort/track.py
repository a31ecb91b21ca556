"""``uae-ray cohort track``: every pair's baseline lesions tracked into its follow-up, one Ray
task per pair, from the stored embeddings (scans without them are embedded through Triton
first, by the ``cohort embed`` tasks, so later jobs reuse them).

Pairs come from :func:`~uae_ray.cohort.pairs.load_pairs` (columns ``baseline``,
``followup`` and ``lesions`` and/or ``lesion_mask``; without a CSV, consecutive scans of each
patient of the archive, with a ``lesions.csv`` beside, or inside the folder of, each
baseline).

Layout under ``out``:
  ``tracks/parts/<pair_id>.parquet``  per-pair tracks (written by the workers)
  ``tracks/tracks.parquet``          all tracks (schema :data:`~uae_ray.storage.schemas.TRACKS`)
  ``manifests/track``                status per pair (keyed by pair id)
Only hashed ids (pair, baseline and follow-up scan ids) appear in the tables. A pair that
fails (unreadable lesions, a scan that cannot be embedded, ...) is recorded with its one-line
error and the others go on. A re-run skips the pairs that are ``ok`` for the same model,
method and lesion inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from uae_ray.api.inputs import read_lesion_mask, read_lesions
from uae_ray.cohort.embed import persist_record
from uae_ray.cohort.job import PairJob, run_pair_job
from uae_ray.cohort.maps_io import embeddings_uri, read_maps
from uae_ray.cohort.pairs import ScanPair, load_pairs
from uae_ray.cohort.runner import apply_worker_env, one_line, worker_env
from uae_ray.serving import get_embedder
from uae_ray.storage import basename, exists, join, parent, write_table_atomic
from uae_ray.storage.images import is_image_name
from uae_ray.storage.schemas import TRACKS
from uae_ray.storage.uri import uri_hash

if TYPE_CHECKING:
    from uae_ray.tasks.points_io import LesionPoints, Track


logger = logging.getLogger(__name__)

TRACK_MANIFEST = "manifests/track"
BASELINE_COL, FOLLOWUP_COL = "baseline", "followup"
LESIONS_COL, MASK_COL = "lesions", "lesion_mask"
LESIONS_SIDECAR = "lesions.csv"


@dataclass(frozen=True)
class TrackSettings:
    """What every track task needs (shared with the workers through the object store)."""

    out: str
    embeddings: str
    manifest: str
    method: str
    extent: bool
    model_version: str
    env: dict[str, str]

    @property
    def method_label(self) -> str:
        return f"{self.method}+extent" if self.extent else self.method


def part_uri(out: str, pair_id: str) -> str:
    return TRACK_JOB.part_uri(out, pair_id)


def lesion_inputs(pair: ScanPair) -> tuple[str | None, str | None]:
    """The pair's lesions CSV and lesion mask URIs (a ``lesions.csv`` sidecar of the baseline
    when the pair names neither)."""
    csv_uri, mask_uri = pair.column_uri(LESIONS_COL), pair.column_uri(MASK_COL)
    if csv_uri or mask_uri:
        return csv_uri, mask_uri
    folder = parent(pair.first) if is_image_name(basename(pair.first)) else pair.first
    for candidate in (join(folder, LESIONS_SIDECAR), join(parent(pair.first), LESIONS_SIDECAR)):
        if exists(candidate):
            return candidate, None
    return None, None


def _named_lesion_inputs(pair: ScanPair) -> tuple[str | None, str | None]:
    """:func:`lesion_inputs`, or a ValueError when the pair names none."""
    csv_uri, mask_uri = lesion_inputs(pair)
    if not csv_uri and not mask_uri:
        raise ValueError(
            f"pair {pair.pair_id}: no lesions (give a '{LESIONS_COL}' or '{MASK_COL}' column, or put "
            f"{LESIONS_SIDECAR} beside the baseline)"
        )
    return csv_uri, mask_uri


def pair_lesions(pair: ScanPair) -> LesionPoints:
    """The lesions of a pair: its CSV, its mask, or both (names must not repeat).

    Raises:
        ValueError: No lesion input, or an unusable one (the message names it).
    """
    csv_uri, mask_uri = _named_lesion_inputs(pair)
    lesions = None
    if csv_uri:
        lesions = read_lesions(csv_uri)
    if mask_uri:
        from_mask = read_lesion_mask(mask_uri)
        lesions = from_mask if lesions is None else lesions.concat(from_mask, f"pair {pair.pair_id}")
    return lesions


def check_pair_lesions(pair: ScanPair) -> None:
    """Before any embedding: the pair names lesions, its CSV parses and its mask exists.

    Raises:
        ValueError: one line naming the input.
    """
    csv_uri, mask_uri = _named_lesion_inputs(pair)
    if csv_uri:
        read_lesions(csv_uri)
    if mask_uri and not exists(mask_uri):
        raise ValueError(f"{mask_uri}: lesion mask not found")


def pair_version(settings: TrackSettings, pair: ScanPair) -> str:
    """Manifest version of a pair: model, method, extent and the lesion inputs named by the
    pair (a change of any redoes the pair; a changed file under the same name needs --force)."""
    inputs = f"{pair.column_uri(LESIONS_COL)}|{pair.column_uri(MASK_COL)}"
    return f"{settings.model_version}|{settings.method_label}|{uri_hash(inputs, 12)}"


def tracks_table(pair: ScanPair, tracks: list[Track], method: str, model_version: str) -> pa.Table:
    """Rows of :data:`~uae_ray.storage.schemas.TRACKS` for one pair."""
    n = len(tracks)

    def col(attr: str) -> np.ndarray:
        return np.array([getattr(t, attr) for t in tracks], dtype=np.float64)

    def nullable(values: np.ndarray) -> list[float | None]:
        return [None if not np.isfinite(v) else float(v) for v in values]

    return pa.table(
        {
            "pair_id": [pair.pair_id] * n,
            "baseline_id": [pair.first_id] * n,
            "followup_id": [pair.second_id] * n,
            "name": [t.name for t in tracks],
            "baseline_x": col("baseline_x"),
            "baseline_y": col("baseline_y"),
            "baseline_z": col("baseline_z"),
            "radius_mm": nullable(col("radius_mm")),
            "x": col("x"),
            "y": col("y"),
            "z": col("z"),
            "score": col("score").astype(np.float32),
            "found": np.array([t.found for t in tracks], dtype=bool),
            "consistency": pa.array(nullable(col("consistency")), type=pa.float32()),
            "error": [t.error for t in tracks],
            "method": [method] * n,
            "model_version": [model_version] * n,
        },
        schema=TRACKS,
    )


def track_pair(pair: ScanPair, settings: TrackSettings) -> dict[str, Any]:
    """Tracks one pair's lesions in the stored embeddings; writes its part table. Never raises:
    returns a manifest record."""
    apply_worker_env(settings.env)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"scan_id": pair.pair_id, "uri": pair.uri}
    try:
        from uae_ray.tasks.track import TrackConfig, track_lesions

        lesions = pair_lesions(pair)
        base = read_maps(embeddings_uri(settings.embeddings, pair.first_id))
        follow = read_maps(embeddings_uri(settings.embeddings, pair.second_id))
        for name, maps in (("baseline", base), ("follow-up", follow)):
            if maps.model_version != settings.model_version:
                raise ValueError(f"stored {name} embeddings are of model {maps.model_version}, "
                                 f"the job's of {settings.model_version}")
        tracks = track_lesions(base, lesions, follow, settings.method, TrackConfig(extent=settings.extent))
        table = tracks_table(pair, tracks, settings.method_label, settings.model_version)
        uri = part_uri(settings.out, pair.pair_id)
        write_table_atomic(table, uri)
        failed = [t.error for t in tracks if t.error]
        record.update(status="ok", model_version=pair_version(settings, pair), output_uri=uri, n_bytes=table.nbytes)
        if failed:  # the pair is done; its untrackable lesions are rows with an error
            record["error"] = f"{len(failed)} lesion(s) not tracked: {failed[0]}"
    except Exception as e:  # recorded per pair; the job goes on
        record.update(status="error", error=one_line(e))
    record["seconds"] = time.perf_counter() - t0
    return persist_record(settings.manifest, record)


def run_cohort_track(
    pairs_csv: str | None,
    out: str,
    triton_url: str | None,
    archive: str | None = None,
    embeddings: str | None = None,
    ray_address: str | None = None,
    checkpoint: str | None = None,
    force: bool = False,
    limit: int | None = None,
    method: str = "fixed-point",
    extent: bool = True,
) -> dict[str, Any]:
    """Tracks the lesions of every pair (see the module docstring); returns a summary."""
    embeddings = embeddings or out
    pairs = load_pairs(pairs_csv, BASELINE_COL, FOLLOWUP_COL, archive)
    pairs = pairs[:limit] if limit else pairs
    model_version = get_embedder(triton_url, checkpoint=checkpoint).version
    settings = TrackSettings(out, embeddings, join(out, TRACK_MANIFEST), method, extent, model_version, worker_env())
    logger.info("cohort track: %d pairs, method %s, model %s", len(pairs), settings.method_label, model_version)
    summary: dict[str, Any] = {"pairs": len(pairs), "method": settings.method_label, "model_version": model_version}

    job_summary, table = run_pair_job(TRACK_JOB, pairs, settings, settings.manifest, out, embeddings, model_version,
                                      triton_url, checkpoint, ray_address, force)
    summary.update(job_summary)
    n_found = int(np.sum(table.column("found").to_numpy(zero_copy_only=False))) if table.num_rows else 0
    summary.update(tracks_uri=summary.pop("table_uri"), found=n_found)
    return summary


#: ``cohort track`` on the pair-job skeleton.
TRACK_JOB = PairJob("cohort track", "tracks", TRACKS, ("baseline", "follow-up"), track_pair, pair_version,
                    check_pair_lesions)

