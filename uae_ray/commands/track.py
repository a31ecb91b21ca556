"""``uae-ray track``: a baseline's lesions found in a follow-up scan of the same patient."""

from __future__ import annotations

import logging
import time

import numpy as np

from uae_ray.volume import detect_modality
from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)


def read_lesions(lesions: str | None, lesion_mask: str | None):
    """The lesions of ``--lesions`` and/or ``--lesion-mask`` (names must not repeat).

    Raises:
        ValueError: neither given, or an unusable file (one line naming it).
    """
    from uae_ray.api.inputs import read_lesion_mask
    from uae_ray.api.inputs import read_lesions as read_lesions_file

    if not lesions and not lesion_mask:
        raise ValueError("uae-ray track: give --lesions LESIONS.csv and/or --lesion-mask MASK")
    found = read_lesions_file(lesions) if lesions else None
    if lesion_mask:
        from_mask = read_lesion_mask(lesion_mask)
        found = from_mask if found is None else found.concat(from_mask, f"{lesions} + {lesion_mask}")
    return found


def run(
    baseline: str,
    followup: str,
    lesions: str | None,
    out: str,
    lesion_mask: str | None = None,
    triton_url: str | None = None,
    checkpoint: str | None = None,
    modality: str | None = None,
    report: str | None = None,
    method: str = "fixed-point",
    extent: bool = True,
    device: str | None = None,
) -> int:
    """Runs the verb. Returns the exit code: 0; 1 when a lesion could not be tracked (e.g. it
    lies outside the baseline: its row carries the error, the others are tracked); 2 when an
    input is unusable (nothing is written)."""
    from uae_ray.api.inputs import read_image_uri
    from uae_ray.api.models import get_embedder
    from uae_ray.api.outputs import write_markups, write_output
    from uae_ray.tasks.markups import PointGroup
    from uae_ray.tasks.points_io import write_tracks_csv
    from uae_ray.tasks.track import LesionTracker, TrackConfig

    t0 = time.perf_counter()
    try:
        named = read_lesions(lesions, lesion_mask)
        base_image = read_image_uri(baseline)
        base_modality = detect_modality(base_image, baseline, modality)
        follow_image = read_image_uri(followup)
        follow_modality = detect_modality(follow_image, followup, modality)
    except Exception as e:  # an unusable input: nothing to do
        logger.error("%s", one_line(e))
        return 2
    embedder = get_embedder(triton_url, checkpoint=checkpoint, device=device)
    tracker = LesionTracker(embedder, base_image, named, base_modality, method, TrackConfig(extent=extent))
    tracks = tracker.track(follow_image, follow_modality)
    write_output(out, lambda path: write_tracks_csv(path, tracks))
    xyz = np.array([[t.x, t.y, t.z] for t in tracks], dtype=float)
    write_markups([PointGroup("tracks", tuple(t.name for t in tracks), xyz, [t.score for t in tracks],
                              [t.found for t in tracks])], out)
    failed = [t for t in tracks if t.error]
    for t in failed:
        logger.error("%s: %s", baseline, t.error)
    n_found = sum(t.found for t in tracks)
    logger.info(
        "wrote %d tracks to %s: %d found, %d abstained, %d not tracked (%.1f s, model %s)",
        len(tracks), out, n_found, len(tracks) - n_found - len(failed), len(failed), time.perf_counter() - t0,
        tracker.model_version,
    )
    if report:
        from uae_ray.report.tracks import track_report

        write_output(report, lambda path: track_report(
            path, base_image, base_modality, follow_image, follow_modality, tracks,
            title=f"uae-ray lesion tracking QC ({method}{'+extent' if extent else ''})"))
        logger.info("wrote report %s", report)
    return 1 if failed else 0
