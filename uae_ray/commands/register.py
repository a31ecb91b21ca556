"""``uae-ray register``: a rigid or affine transform (fixed -> moving) from anatomical embeddings."""

from __future__ import annotations

import logging
import time

from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)


def run(
    fixed: str,
    moving: str,
    out: str,
    transform: str = "rigid",
    resampled: str | None = None,
    refine: bool = False,
    report: str | None = None,
    triton_url: str | None = None,
    checkpoint: str | None = None,
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    device: str | None = None,
) -> int:
    """Runs the verb. Returns the exit code: 0; 1 when the registration itself fails (too few
    correspondences; nothing is written); 2 for unusable input (unreadable image, a modality
    flag that contradicts the image)."""
    from uae_ray.api.inputs import read_image_uri
    from uae_ray.api.models import get_embedder
    from uae_ray.api.outputs import write_image, write_output
    from uae_ray.tasks.register import Registrar, RegistrationError, check_modality, resample_moving
    from uae_ray.tasks.transforms import write_transform_atomic

    try:
        fixed_image = read_image_uri(fixed)
        fixed_mod = check_modality(fixed_image, fixed, fixed_modality)
        moving_image = read_image_uri(moving)
        moving_mod = check_modality(moving_image, moving, moving_modality)
    except Exception as e:  # unreadable image or contradicting flag: nothing to do
        logger.error("%s", one_line(e))
        return 2
    t0 = time.perf_counter()
    embedder = get_embedder(triton_url, checkpoint=checkpoint, device=device)
    try:
        registrar = Registrar(embedder, fixed_image, fixed_mod, fixed_name=fixed)
        result = registrar.register(moving_image, transform, moving_mod, refine, moving_name=moving)
    except RegistrationError as e:
        logger.error("%s", one_line(e))
        return 1
    write_output(out, lambda p: write_transform_atomic(result.transform, p))
    quality = result.quality()
    logger.info(
        "%s -> %s: %s transform from %d correspondences (%d inliers, %.0f %%), residual %.2f mm, overlap %.0f %%%s, "
        "%.1f s; wrote %s", fixed, moving, result.kind, result.n_correspondences, result.n_inliers,
        100 * result.inlier_fraction, result.residual_mm, 100 * result.overlap_fraction,
        ", MI-refined" if result.refined else "", time.perf_counter() - t0, out,
    )
    if result.note:
        logger.warning("%s -> %s: %s", fixed, moving, result.note)
    if resampled or report:
        moved = resample_moving(fixed_image, moving_image, result.transform, moving_mod)
        if resampled:
            write_image(moved, resampled)
            logger.info("wrote the resampled moving image %s", resampled)
        if report:
            from uae_ray.report.registration import RegistrationView, registration_report

            view = RegistrationView(fixed, moving, fixed_image, fixed_mod, moved, moving_mod, quality,
                                    result.transform)
            write_output(report, lambda p: registration_report(p, [view]))
            logger.info("wrote report %s", report)
    for key in ("type", "n_points", "n_correspondences", "n_inliers", "inlier_fraction", "residual_mm",
                "overlap_fraction", "refined", "model_version"):
        print(f"{key:18s} {quality[key]}")
    return 0
