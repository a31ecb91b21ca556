"""The pipeline's steps over the watcher's archive, through the existing cohort jobs.

Every step is the cohort job of the same name over the archive (``<out>/watch/series``, one
scan per fetched series, for a PACS; the watched prefix itself for an S3 / folder source), each
under its own lease, so their manifests skip what an earlier cycle (or a killed one) already
did:

* ``embed`` -> ``<out>/embeddings``; ``landmarks:<name>`` -> ``<out>/landmarks-<name>/``;
  ``prelabel`` -> ``<out>/labels``, ``<out>/prelabel``;
* ``track``: each new study's primary series paired with the patient's most recent prior
  (:func:`~uae_ray.watch.index.prior_of`); the prior's lesions are its
  ``<out>/watch/lesions/<series_key>.csv`` (the lesions it was tracked to, or a copy of its
  configured file, :func:`configured_lesions`) -> ``<out>/tracks``; afterwards the new study's
  found lesions become its lesions file, so the next follow-up is tracked from them;
* ``register``: the new study (moving) to its prior (fixed) -> ``<out>/transforms``.

The templates' and supports' maps are embedded once per model and kept in
``<out>/references/`` (:mod:`uae_ray.cohort.references`): later cycles read them.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from uae_ray.cohort.lease import JobLease
from uae_ray.cohort.pairs import pair_key
from uae_ray.storage import exists, join, read_bytes, read_table, write_bytes_atomic
from uae_ray.storage.images import scan_id_for
from uae_ray.watch.pipeline import Pipeline

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class StepContext:
    """Where and with what the steps run: ``archive`` is the watcher's own archive of fetched
    series (a PACS source) or the watched archive itself (an S3 / folder source); every meta's
    ``rel`` is its scan's path below it."""

    out: str
    pipeline: Pipeline
    triton_url: str | None
    ray_address: str | None
    archive: str

    def scan_uri(self, meta: dict) -> str:
        return join(self.archive, meta["rel"])

    def scan_id(self, meta: dict) -> str:
        return scan_id_for(self.scan_uri(meta), self.archive)

    def landmarks_out(self, name: str) -> str:
        return join(self.out, f"landmarks-{name}")

    def lesions_uri(self, meta: dict) -> str:
        """The scan's ``lesions.csv``: the lesions tracked into it, or its configured ones."""
        return join(self.out, "watch", "lesions", f"{meta['series_key']}.csv")


@dataclass(frozen=True)
class StudyPair:
    """A new study and the patient's prior (metas of their primary series)."""

    prior: dict
    new: dict

    def pair_id(self, ctx: StepContext) -> str:
        return pair_key(ctx.scan_id(self.prior), ctx.scan_id(self.new))


def _rel(meta: dict) -> str:
    return meta["rel"]


def _pairs_csv(ctx: StepContext, name: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Adds this cycle's pairs of a step to ``<out>/watch/pairs/<name>.csv`` (every pair the
    watcher has run the step on, in order, once each); returns its URI. The cohort job runs over
    the whole file: its manifest skips the pairs done before, and its table holds them all."""
    uri = join(ctx.out, "watch", "pairs", f"{name}.csv")
    known: list[tuple[str, ...]] = []
    if exists(uri):
        known = [tuple(r) for r in list(csv.reader(io.StringIO(read_bytes(uri).decode("utf-8"))))[1:]]
    seen = set(known)
    for row in rows:
        if row not in seen:
            known.append(row)
            seen.add(row)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(known)
    write_bytes_atomic(uri, text.getvalue().encode("utf-8"))
    return uri


def configured_lesions(folder: str, meta: dict) -> str:
    """``<lesions>/<StudyInstanceUID>.csv`` of a PACS study, ``<lesions>/<path below the
    archive>.csv`` of an archive scan."""
    name = meta["study_uid"] if meta.get("study_uid") else meta["rel"].rstrip("/")
    return join(folder, f"{name}.csv")


def prior_lesions(ctx: StepContext, prior: dict) -> str | None:
    """The prior's lesions URI: its own (from tracking), else a copy of the configured file
    (:func:`configured_lesions`); ``None`` when it has none."""
    own = ctx.lesions_uri(prior)
    if exists(own):
        return own
    folder = ctx.pipeline.track.lesions if ctx.pipeline.track else None
    if folder:
        configured = configured_lesions(folder, prior)
        if exists(configured):
            write_bytes_atomic(own, read_bytes(configured))
            return own
    return None


def write_tracked_lesions(ctx: StepContext, pair: StudyPair) -> int:
    """The new study's ``lesions.csv`` from its found tracks (for the next follow-up); returns
    the number of lesions written (0: none found, nothing written)."""
    tracks_uri = join(ctx.out, "tracks", "tracks.parquet")
    if not exists(tracks_uri):
        return 0
    rows = read_table(tracks_uri, filters=[("pair_id", "=", pair.pair_id(ctx)), ("found", "=", True)]).to_pylist()
    if not rows:
        return 0
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(("name", "x", "y", "z", "radius_mm"))
    for r in sorted(rows, key=lambda r: r["name"]):
        writer.writerow((r["name"], r["x"], r["y"], r["z"], "" if r["radius_mm"] is None else r["radius_mm"]))
    write_bytes_atomic(ctx.lesions_uri(pair.new), text.getvalue().encode("utf-8"))
    return len(rows)


@contextmanager
def _timed(summaries: dict[str, Any], step: str):
    """Adds ``seconds`` (wall) to the summary the block stores as ``summaries[step]``."""
    t0 = time.perf_counter()
    yield
    summaries[step]["seconds"] = round(time.perf_counter() - t0, 3)


def run_steps(ctx: StepContext, pairs: list[StudyPair]) -> dict[str, Any]:
    """Runs every step of the pipeline (module docstring); returns each job's summary by step,
    with its wall ``seconds``.

    Raises:
        ServiceUnreachableError / StorageError / LeaseHeldError: as the cohort jobs do; what
            finished is kept in their manifests.
    """
    from uae_ray.cohort.embed import run_cohort_embed
    from uae_ray.cohort.maps_io import DEFAULT_TIER

    p, out = ctx.pipeline, ctx.out
    summaries: dict[str, Any] = {}
    with _timed(summaries, "embed"), JobLease(out, "embed"):
        summaries["embed"] = run_cohort_embed(ctx.archive, out, ctx.triton_url, ctx.ray_address, p.checkpoint,
                                              tier=p.storage_tier or DEFAULT_TIER)
    for step in p.landmarks:
        from uae_ray.cohort.landmarks import run_cohort_landmarks

        with _timed(summaries, f"landmarks:{step.name}"), JobLease(ctx.landmarks_out(step.name), "landmarks"):
            summaries[f"landmarks:{step.name}"] = run_cohort_landmarks(
                ctx.archive, ctx.landmarks_out(step.name), step.template, step.points, ctx.triton_url,
                embeddings=out, ray_address=ctx.ray_address, checkpoint=p.checkpoint, references=out)
    if p.prelabel is not None:
        from uae_ray.cohort.prelabel import run_cohort_prelabel

        with _timed(summaries, "prelabel"), JobLease(out, "prelabel"):
            summaries["prelabel"] = run_cohort_prelabel(ctx.archive, list(p.prelabel.supports), p.prelabel.organs, out,
                                                        ctx.triton_url, ctx.ray_address, boxes=p.prelabel.boxes,
                                                        checkpoint=p.checkpoint)
    if p.track is not None:
        with _timed(summaries, "track"):
            summaries["track"] = _track(ctx, pairs)
    if p.register is not None and pairs:
        from uae_ray.cohort.register import FIXED_COL, MOVING_COL, run_cohort_register

        uri = _pairs_csv(ctx, "register", (FIXED_COL, MOVING_COL),
                         [(_rel(pr.prior), _rel(pr.new)) for pr in pairs])
        with _timed(summaries, "register"), JobLease(out, "register"):
            summaries["register"] = run_cohort_register(uri, out, ctx.triton_url, ctx.archive, out, ctx.ray_address,
                                                         p.checkpoint, kind=p.register.kind)
    return summaries


def _track(ctx: StepContext, pairs: list[StudyPair]) -> dict[str, Any]:
    """Tracks in rounds: the pairs whose prior has lesions first; the lesions they carry into
    their new study let a later pair of the same cycle (that study as its prior) run next.
    Each pair's own outcome is in the track manifest; the summary counts this cycle's pairs and
    (``table_*``) every pair of the tracks table."""
    from uae_ray.cohort.track import BASELINE_COL, FOLLOWUP_COL, LESIONS_COL, run_cohort_track

    summary: dict[str, Any] = {"pairs": len(pairs), "rounds": 0, "lesions_carried": 0}
    waiting = list(pairs)
    while True:
        ready = [pr for pr in waiting if prior_lesions(ctx, pr.prior) is not None]
        if not ready:
            break
        waiting = [pr for pr in waiting if pr not in ready]
        rows = [(_rel(pr.prior), _rel(pr.new), ctx.lesions_uri(pr.prior)) for pr in ready]
        uri = _pairs_csv(ctx, "track", (BASELINE_COL, FOLLOWUP_COL, LESIONS_COL), rows)
        with JobLease(ctx.out, "track"):
            job = run_cohort_track(uri, ctx.out, ctx.triton_url, ctx.archive, ctx.out, ctx.ray_address,
                                   ctx.pipeline.checkpoint)
        summary["rounds"] += 1
        summary.update(table_pairs=job["pairs"], table_done=job["done"], tracks_uri=job["tracks_uri"])
        summary["lesions_carried"] += sum(write_tracked_lesions(ctx, pr) for pr in ready)
    summary["priors_without_lesions"] = len(waiting)
    return summary


def found_points(ctx: StepContext, meta: dict, pair: StudyPair | None) -> list[dict]:
    """The found landmarks of the scan and the found tracked lesions of its pair."""
    sid = ctx.scan_id(meta)
    points = []
    for step in ctx.pipeline.landmarks:
        uri = join(ctx.landmarks_out(step.name), "landmarks", "detections.parquet")
        if exists(uri):
            rows = read_table(uri, filters=[("scan_id", "=", sid), ("found", "=", True)]).to_pylist()
            points += [{"kind": "landmark", "name": f"{step.name}/{r['name']}", "x": r["x"], "y": r["y"], "z": r["z"],
                        "score": r["score"]} for r in rows]
    tracks = join(ctx.out, "tracks", "tracks.parquet")
    if pair is not None and exists(tracks):
        rows = read_table(tracks, filters=[("pair_id", "=", pair.pair_id(ctx)), ("found", "=", True)]).to_pylist()
        points += [{"kind": "lesion", "name": r["name"], "x": r["x"], "y": r["y"], "z": r["z"], "score": r["score"]}
                   for r in rows]
    return sorted(points, key=lambda q: (q["kind"], q["name"]))
