"""``uae-ray landmarks``: a template's named points found in each target scan."""

from __future__ import annotations

import logging
import time

from uae_ray.tasks.points_io import Detection, write_detections_csv
from uae_ray.volume import detect_modality
from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)


def detections_groups(detections: list[Detection]):
    """One Slicer point list per target (:class:`~uae_ray.tasks.markups.PointGroup`)."""
    import numpy as np

    from uae_ray.tasks.markups import PointGroup

    targets = list(dict.fromkeys(d.target for d in detections))
    groups = []
    for t in targets:
        ds = [d for d in detections if d.target == t]
        xyz = np.array([[d.x, d.y, d.z] for d in ds], dtype=np.float64)
        groups.append(PointGroup(t.rstrip("/").rsplit("/", 1)[-1], tuple(d.name for d in ds), xyz,
                                 [d.score for d in ds], [d.found for d in ds]))
    return groups


def run(
    template: str,
    points: str,
    targets: list[str],
    out: str,
    triton_url: str | None = None,
    checkpoint: str | None = None,
    modality: str | None = None,
    report: str | None = None,
    method: str = "fixed-point",
    device: str | None = None,
) -> int:
    """Runs the verb. Returns the exit code: 0, or 1 when a target failed (others still run),
    or 2 when the template or points are unusable (nothing is written)."""
    from uae_ray.api.inputs import read_image_uri, read_points
    from uae_ray.api.models import get_embedder
    from uae_ray.api.outputs import write_markups, write_output
    from uae_ray.tasks.landmarks import LandmarkDetector, check_points_inside

    try:
        named = read_points(points)
        template_image = read_image_uri(template)
        template_modality = detect_modality(template_image, template, modality)
    except Exception as e:  # unreadable template or points: nothing to do
        logger.error("%s", one_line(e))
        return 2
    try:
        check_points_inside(named, template_image, "template")
    except ValueError as e:
        logger.error("%s: %s", points, one_line(e))
        return 2
    embedder = get_embedder(triton_url, checkpoint=checkpoint, device=device)
    detector = LandmarkDetector(embedder, template_image, named, template_modality, method)
    logger.info("template %s embedded (%d points, model %s)", template, len(named), detector.model_version)

    detections: list[Detection] = []
    views = []
    failed = 0
    for i, target in enumerate(targets, start=1):
        t0 = time.perf_counter()
        try:
            image = read_image_uri(target)
            target_modality = detect_modality(image, target, modality)
            found = detector.detect(image, target, target_modality)
        except Exception as e:  # one bad target is reported; the others still run
            message = one_line(e)
            logger.error("%s", message if target in message else f"{target}: {message}")
            failed += 1
            continue
        detections += found
        if report:
            from uae_ray.report.landmarks import TargetView

            views.append(TargetView(target, image, target_modality, found))
        n_found = sum(d.found for d in found)
        logger.info(
            "[%d/%d] %s: %d/%d points found in %.1f s", i, len(targets), target, n_found, len(found), time.perf_counter() - t0
        )
    write_output(out, lambda path: write_detections_csv(path, detections))
    markups = write_markups(detections_groups(detections), out)
    logger.info("wrote %d detections to %s and %s (%d target(s) failed)", len(detections), out, markups, failed)
    if report:
        from uae_ray.report.landmarks import landmark_report

        write_output(report, lambda path: landmark_report(path, template_image, template_modality, named, views))
        logger.info("wrote report %s", report)
    return 1 if failed else 0
