"""Landmark-based rigid / affine registration from anatomical embeddings (CT-CT and CT-MR).

Core logic only (no Ray, Triton or S3): give it an :class:`~uae_ray.matching.Embedder` or
precomputed :class:`~uae_ray.matching.EmbeddingMaps`.

1. A regular grid of points over the body of the fixed image (CT above -300 HU, MR above a
   low background level), the densest grid of at most ``max_points`` points.
2. Each point is matched into the moving image by fixed-point matching
   (:func:`~uae_ray.matching.find_points`, ``method="fixed-point"``): only round-trip
   consistent, confident matches inside the moving field of view are ``found``, so points
   outside the overlap of the two fields of view drop out by themselves.
3. RANSAC over minimal sets (3 points rigid, 4 affine; seeded, so deterministic) finds the
   largest consistent set; the consensus is grown from it, and a robust IRLS fit (Tukey,
   :func:`~uae_ray.matching.fit.fit_points`) of the inliers gives the transform.
4. Optional ``refine``: a short SimpleITK Mattes-MI registration started from it
   (:func:`~uae_ray.tasks.mi.mi_register`).

The transform maps fixed-space points to moving-space points (ITK's resampling convention):
``sitk.Resample(moving, fixed, transform)`` lays the moving image over the fixed one. World
points are LPS mm arrays (N, 3) in x, y, z order.
"""

from uae_ray.tasks.register.config import (
    FlatOverlapError,
    MASK_SPACING_MM,
    RegistrationConfig,
    RegistrationError,
    RegistrationResult,
)
from uae_ray.tasks.register.points import body_mask, grid_points
from uae_ray.tasks.register.robust import ransac_fit
from uae_ray.tasks.register.correspondences import (
    affine_supported,
    Correspondences,
    fit_correspondences,
    fit_or_fall_back,
    match_grid,
    register_maps,
)
from uae_ray.tasks.register.registrar import register_images, Registrar
from uae_ray.tasks.register.resample import check_modality, resample_moving

__all__ = [
    "Correspondences",
    "FlatOverlapError",
    "MASK_SPACING_MM",
    "Registrar",
    "RegistrationConfig",
    "RegistrationError",
    "RegistrationResult",
    "affine_supported",
    "body_mask",
    "check_modality",
    "fit_correspondences",
    "fit_or_fall_back",
    "grid_points",
    "match_grid",
    "ransac_fit",
    "register_images",
    "register_maps",
    "resample_moving",
]
