"""Registration settings, results and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk
import numpy as np

from uae_ray.matching import FixedPointConfig


#: Spacing (mm) of the coarse body mask the grid points are picked from.
MASK_SPACING_MM = 4.0


class RegistrationError(ValueError):
    """Registration impossible for a pair (one line, naming both files)."""


class FlatOverlapError(RegistrationError):
    """An affine fit of correspondences that lie in a thin slab (12 parameters undetermined)."""


@dataclass(frozen=True)
class RegistrationConfig:
    """Parameters of landmark-based registration.

    Attributes:
        max_points: Grid points at most; the grid is the densest (in steps of
            :data:`MASK_SPACING_MM`) that keeps to this.
        min_spacing_mm: Grid spacing at least this.
        ct_body_hu: CT voxels above this are body.
        matcher: Fixed-point matching settings. The default cube is the query point alone
            (one A->B->A round trip per point: many points matter more than a cube per point).
        min_correspondences: Fewer found matches, or fewer inliers, than this is an error.
        ransac_iterations: Minimal sets tried.
        inlier_mm: A correspondence within this of the transform is an inlier.
        fit_scale_mm: Smallest Tukey cut-off of the final IRLS fit (the expected match precision).
        seed: Seed of RANSAC's sampling.
        second_pass_deg: Match a second time, in the moving image de-rotated by the first rigid
            estimate, when that rotation is at least this (degrees); ``None``: one pass.
        coarse_every: The first pass matches every this-th grid point (the rest are matched
            only when no second pass follows).
        select_affine: An affine request gets a rigid fit (with a note) when the inliers do not
            support the 6 extra parameters (:func:`affine_supported`: spatial cross-validation).
        window_mm: Every search looks only within a cube of this half-size around a predicted
            position: the first estimate's prediction; in the first pass the best voxel of the
            global embeddings alone (a coarse to fine search; the window is then at least 1.5
            global voxels). ``None``: whole-image searches, several times slower on a large scan.
        second_window_mm: The window of the second pass (its matches lie near the identity).
        context_mm: The second pass embeds the de-rotated image this far (plus the window)
            beyond its points, for the network's receptive field.
        second_points: The second pass matches only this many grid points, those nearest the
            centre of the grid's box, so that only their box is embedded again (the cost of
            the second pass is mostly that embedding); ``None``: every grid point.
        refine_iterations: Optimiser iterations of the optional MI refinement.
        refine_spacing_mm: Image spacing of the MI refinement.
        refine_threads: Threads of the MI refinement (``None``: SimpleITK's default; 1 repeats
            exactly).
    """

    max_points: int = 250
    min_spacing_mm: float = 8.0
    ct_body_hu: float = -300.0
    matcher: FixedPointConfig = field(default_factory=lambda: FixedPointConfig(points_per_axis=1))
    min_correspondences: int = 12
    ransac_iterations: int = 400
    inlier_mm: float = 8.0
    fit_scale_mm: float = 3.0
    seed: int = 0
    second_pass_deg: float | None = 1.5
    coarse_every: int = 3
    window_mm: float | None = 16.0
    second_window_mm: float = 8.0
    context_mm: float = 16.0
    second_points: int | None = 60
    select_affine: bool = True
    refine_iterations: int = 60
    refine_spacing_mm: float = 3.0
    refine_threads: int | None = None

    @classmethod
    def cross_modality(cls, **overrides: Any) -> "RegistrationConfig":
        """Defaults for CT <-> MR: cross-modality matches are noisier (median error about 10 mm
        per match against about 1 mm CT-CT), so more points (denser grid), a looser round-trip
        tolerance and inlier threshold, and the averaging of many inliers in the fit (every grid
        point in the second pass too, with more context)."""
        base = {
            "max_points": 400,
            "min_spacing_mm": 4.0,
            "matcher": FixedPointConfig(points_per_axis=1, tolerance_mm=10.0, subvoxel=2),
            "inlier_mm": 12.0,
            "fit_scale_mm": 5.0,
            "second_points": None,
            "context_mm": 24.0,
        }
        return cls(**{**base, **overrides})


@dataclass
class RegistrationResult:
    """A fitted transform and its quality figures.

    Attributes:
        transform: Fixed -> moving (:class:`sitk.Euler3DTransform` or :class:`sitk.AffineTransform`).
        kind: ``"rigid"`` or ``"affine"``.
        n_points: Grid points matched (fixed body).
        n_correspondences: Found (round-trip consistent) matches.
        n_inliers: Correspondences within ``inlier_mm`` of the landmark fit.
        inlier_fraction: ``n_inliers / n_correspondences``.
        residual_mm: Median residual of the inliers under the landmark fit (mm).
        overlap_fraction: Share of the fixed grid points that the transform maps into the moving
            field of view.
        refined: Whether the MI refinement ran (``transform`` is then its result).
        model_version: The embedding model.
        note: Why the result differs from what was asked (e.g. an affine request answered
            with a rigid fit), else empty.
        seconds: Wall times: ``embed_fixed``, ``embed_moving``, ``match``, ``embed_second`` and
            ``match_second`` (second pass), ``fit``, ``refine``.
        fixed_points, moving_points: (n_correspondences, 3) the correspondences.
        inliers: (n_correspondences,) bool.
    """

    transform: sitk.Transform
    kind: str
    n_points: int
    n_correspondences: int
    n_inliers: int
    inlier_fraction: float
    residual_mm: float
    overlap_fraction: float
    refined: bool
    model_version: str
    seconds: dict[str, float]
    fixed_points: np.ndarray
    moving_points: np.ndarray
    inliers: np.ndarray
    note: str = ""

    def quality(self) -> dict[str, Any]:
        """The quality figures as a flat dict (for tables, reports and Parquet rows)."""
        return {
            "type": self.kind,
            "n_points": self.n_points,
            "n_correspondences": self.n_correspondences,
            "n_inliers": self.n_inliers,
            "inlier_fraction": round(self.inlier_fraction, 4),
            "residual_mm": round(self.residual_mm, 3),
            "overlap_fraction": round(self.overlap_fraction, 4),
            "refined": self.refined,
            "model_version": self.model_version,
            "seconds": round(sum(self.seconds.values()), 3),
            "note": self.note,
        }

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Fixed-space (N, 3) world points mapped into the moving space."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.array([self.transform.TransformPoint(tuple(map(float, p))) for p in pts]).reshape(-1, 3)


# --------------------------------------------------------------------------- grid points
