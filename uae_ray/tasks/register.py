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

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.matching import (
    EmbeddingMaps,
    Embedder,
    FixedPointConfig,
    embed_image,
    find_points,
    fit_points,
    well_spread,
)
from uae_ray.tasks.transforms import KINDS, compose, make_transform, matrix_offset
from uae_ray.volume import Grid, detect_modality

logger = logging.getLogger(__name__)

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


def body_mask(image: sitk.Image, modality: str, ct_body_hu: float = -300.0,
              spacing_mm: float = MASK_SPACING_MM) -> tuple[np.ndarray, Grid]:
    """A coarse body mask of an image on an LPS-aligned grid of ``spacing_mm``.

    CT: above ``ct_body_hu``. MR: above ``min + 0.1 * (p99 - min)`` (background is the darkest,
    near-constant part of an MR).

    Returns:
        ``(mask (z, y, x) bool, grid)``; voxels outside the image are False.
    """
    from uae_ray.volume import model_grid, resample_to_grid

    grid = model_grid(image, spacing_mm=spacing_mm, pad_multiple=1)
    values = sitk.GetArrayFromImage(
        resample_to_grid(image, grid, sitk.sitkLinear, default_value=float("nan"), output_pixel_type=sitk.sitkFloat32)
    )
    finite = np.isfinite(values)
    if modality == "CT":
        level = ct_body_hu
    else:
        v = values[finite]
        vmin = float(v.min()) if v.size else 0.0
        level = vmin + 0.1 * (float(np.percentile(v, 99.0)) - vmin) if v.size else 0.0
    with np.errstate(invalid="ignore"):
        mask = finite & (values > level)
    return mask, grid


def grid_points(mask: np.ndarray, grid: Grid, max_points: int = 400, min_spacing_mm: float = 8.0) -> np.ndarray:
    """The densest regular grid of body points with at most ``max_points`` points.

    The spacing is one step for every axis, except that an axis keeps at least 5 layers of
    points (a thin slab would otherwise give a nearly flat point set).

    Args:
        mask: (z, y, x) bool body mask on ``grid``.
        grid: Its geometry (isotropic spacing).
        max_points: Upper bound on the number of points.
        min_spacing_mm: Lower bound on the grid spacing.

    Returns:
        (N, 3) world points (LPS mm), centred in the mask's bounding box.
    """
    zyx = np.argwhere(mask)
    if len(zyx) == 0:
        return np.zeros((0, 3))
    lo, hi = zyx.min(axis=0), zyx.max(axis=0)
    # A thin axis (a slab) keeps at least 5 layers, so that an affine fit stays determined.
    cap = np.maximum(1, (hi - lo) // 4)
    step = max(1, int(np.ceil(min_spacing_mm / grid.spacing[0] - 1e-6)))
    while True:
        steps = np.minimum(step, cap)
        start = lo + ((hi - lo) % steps) // 2
        keep = np.all((zyx - start) % steps == 0, axis=1)
        if keep.sum() <= max_points or step > max(mask.shape):
            break
        step += 1
    return grid.index_to_world(zyx[keep][:, ::-1].astype(np.float64))


# --------------------------------------------------------------------------- robust fit


def _kabsch_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigid maps of many minimal sets: ``src, dst`` (B, k, 3) -> ``R`` (B, 3, 3), ``t`` (B, 3)."""
    cs, cd = src.mean(axis=1), dst.mean(axis=1)
    h = np.einsum("bki,bkj->bij", src - cs[:, None], dst - cd[:, None])
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("bji,bkj->bik", vt, u)))  # det(V U^T)
    d[d == 0] = 1.0
    diag = np.zeros((len(src), 3, 3))
    diag[:, 0, 0] = diag[:, 1, 1] = 1.0
    diag[:, 2, 2] = d
    rot = np.einsum("bji,bjk,blk->bil", vt, diag, u)  # V diag U^T
    return rot, cd - np.einsum("bij,bj->bi", rot, cs)


def _affine_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact affine maps of 4-point sets (B, 4, 3); returns ``A, t`` and which sets were usable
    (not near-degenerate)."""
    x = np.concatenate([src, np.ones(src.shape[:2] + (1,))], axis=2)  # (B, 4, 4)
    centred = src - src.mean(axis=1, keepdims=True)
    sv = np.linalg.svd(centred, compute_uv=False)  # (B, 3)
    ok = sv[:, 2] > 0.1 * sv[:, 0]
    sol = np.zeros((len(src), 4, 3))
    if ok.any():
        sol[ok] = np.linalg.solve(x[ok], dst[ok])
    return np.transpose(sol[:, :3], (0, 2, 1)), sol[:, 3], ok


def ransac_fit(
    src: np.ndarray,
    dst: np.ndarray,
    kind: str,
    iterations: int = 400,
    inlier_mm: float = 8.0,
    scale_mm: float = 3.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust ``dst ~ A src + t``: MSAC over minimal sets, consensus growing, then IRLS.

    Args:
        src, dst: (N, 3) correspondences.
        kind: ``"rigid"`` or ``"affine"``.
        iterations: Minimal sets tried (seeded sampling: the result is deterministic).
        inlier_mm: Inlier threshold.
        scale_mm: Smallest Tukey cut-off of the final IRLS fit.

    Returns:
        ``(A (3, 3), t (3,), inliers (N,) bool)``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    k = 3 if kind == "rigid" else 4
    rng = np.random.default_rng(seed)
    sets = np.argsort(rng.random((iterations, n)), axis=1)[:, :k]
    if kind == "rigid":
        mats, offs = _kabsch_batch(src[sets], dst[sets])
        ok = np.ones(len(sets), dtype=bool)
    else:
        mats, offs, ok = _affine_batch(src[sets], dst[sets])
    # Also try the rigid hypotheses for affine (more stable minimal sets, scale grown later).
    if kind == "affine":
        r_mats, r_offs = _kabsch_batch(src[sets[:, :3]], dst[sets[:, :3]])
        mats, offs = np.concatenate([mats, r_mats]), np.concatenate([offs, r_offs])
        ok = np.concatenate([ok, np.ones(len(r_mats), dtype=bool)])
    res = np.linalg.norm(np.einsum("bij,nj->bni", mats, src) + offs[:, None] - dst[None], axis=2)  # (B, N)
    cost = np.minimum(res, inlier_mm) ** 2
    cost[~ok] = np.inf
    best = int(np.argmin(cost.sum(axis=1)))
    matrix, offset = mats[best], offs[best]
    inliers = res[best] <= inlier_mm
    # Grow the consensus: refit on the inliers, recompute them, until they settle.
    for _ in range(10):
        if inliers.sum() < k:
            break
        pm = fit_points(src[inliers], dst[inliers], kind, scale_mm=scale_mm)
        matrix, offset = pm.matrix, pm.offset
        new = np.linalg.norm(src @ matrix.T + offset - dst, axis=1) <= inlier_mm
        if np.array_equal(new, inliers):
            break
        inliers = new
    return matrix, offset, inliers


# --------------------------------------------------------------------------- registration


@dataclass
class Correspondences:
    """Fixed-space grid points and their found matches in the moving image.

    Attributes:
        n_points: Grid points matched.
        fixed: (K, 3) fixed-space points whose match was found.
        moving: (K, 3) their matches (moving space).
    """

    n_points: int
    fixed: np.ndarray
    moving: np.ndarray


_HINT = ("the fields of view may not overlap, or the model does not match these modalities "
         "(CT-MR needs a cross-modality model such as the default tiny-uae-v3; tiny-v0 is CT only)")


def _match(fixed_maps: EmbeddingMaps, moving_maps: EmbeddingMaps, points: np.ndarray,
           cfg: RegistrationConfig, guess: np.ndarray | None = None, window: float | None = None) -> Correspondences:
    """Fixed-point matches of ``points``, searched within ``window`` (default ``cfg.window_mm``)
    of ``guess`` (predicted moving positions), or coarse to fine from the global embeddings
    without one."""
    window = window or cfg.window_mm
    match = find_points(fixed_maps, points, moving_maps, "fixed-point", cfg.matcher,
                        guess if window else None, window)
    found = np.asarray(match.found, dtype=bool)
    return Correspondences(len(points), points[found], np.asarray(match.points, dtype=np.float64)[found])


def _check_count(corr: Correspondences, cfg: RegistrationConfig, pair: str) -> Correspondences:
    need = max(cfg.min_correspondences, 4)
    if len(corr.fixed) < need:
        raise RegistrationError(
            f"{pair}: too few correspondences: {len(corr.fixed)} of {corr.n_points} grid points matched "
            f"(need {need}); {_HINT}"
        )
    return corr


def _check_models(fixed_maps: EmbeddingMaps, moving_maps: EmbeddingMaps, pair: str) -> None:
    if fixed_maps.model_version != moving_maps.model_version:
        raise RegistrationError(
            f"{pair}: embeddings of different models ({fixed_maps.model_version} vs {moving_maps.model_version})"
        )


def match_grid(
    fixed_maps: EmbeddingMaps,
    moving_maps: EmbeddingMaps,
    points: np.ndarray,
    config: RegistrationConfig | None = None,
    pair: str = "<fixed> -> <moving>",
) -> Correspondences:
    """Fixed-point matches of fixed-space ``points`` into the moving maps (found ones only).

    Raises:
        RegistrationError: Embeddings of different models, or fewer found matches than
            ``config.min_correspondences``.
    """
    cfg = config or RegistrationConfig()
    _check_models(fixed_maps, moving_maps, pair)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return _check_count(_match(fixed_maps, moving_maps, points, cfg), cfg, pair)


def fit_correspondences(
    corr: Correspondences, kind: str, config: RegistrationConfig | None = None, pair: str = "<fixed> -> <moving>"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust ``kind`` fit of correspondences (:func:`ransac_fit`).

    Returns:
        ``(A, t, inliers)`` with ``moving ~ A @ fixed + t``.

    Raises:
        RegistrationError: Fewer inliers than ``config.min_correspondences``, or an affine fit
            of points that do not span 3D.
    """
    cfg = config or RegistrationConfig()
    if kind not in KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {', '.join(KINDS)}")
    need = max(cfg.min_correspondences, 4)
    matrix, offset, inliers = ransac_fit(corr.fixed, corr.moving, kind, cfg.ransac_iterations, cfg.inlier_mm,
                                         cfg.fit_scale_mm, cfg.seed)
    if inliers.sum() < need:
        raise RegistrationError(
            f"{pair}: too few consistent correspondences: {int(inliers.sum())} of {len(corr.fixed)} agree on "
            f"one {kind} transform (need {need}); {_HINT}"
        )
    if kind == "affine" and not well_spread(corr.fixed[inliers], 5.0):
        raise FlatOverlapError(
            f"{pair}: an affine fit needs correspondences that span 3D, but the {int(inliers.sum())} inliers lie "
            "in a thin slab (the overlap of the fields of view is too flat); use a rigid transform"
        )
    return matrix, offset, inliers


def fit_or_fall_back(
    corr: Correspondences, kind: str, config: RegistrationConfig | None = None, pair: str = "<fixed> -> <moving>"
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], str, str]:
    """:func:`fit_correspondences`, except that an affine request on correspondences in a thin
    slab (its 12 parameters undetermined, the 6 of a rigid fit not) gets a rigid fit and a warning.

    Returns:
        ``(fit, fitted kind, note)``; the note says why the kind differs (empty otherwise).
    """
    cfg = config or RegistrationConfig()
    try:
        fit = fit_correspondences(corr, kind, cfg, pair)
    except FlatOverlapError as e:
        logger.warning("%s; fitting a rigid transform instead", e)
        note = "affine undetermined (inliers in a thin slab): rigid fit instead"
        return fit_correspondences(corr, "rigid", cfg, pair), "rigid", note
    if kind == "affine" and cfg.select_affine and not affine_supported(corr.fixed[fit[2]], corr.moving[fit[2]]):
        note = "an affine map does not predict the correspondences better than a rigid one (spatial cross-validation): rigid fit"
        logger.info("%s: %s", pair, note)
        return fit_correspondences(corr, "rigid", cfg, pair), "rigid", note
    return fit, kind, ""


def affine_supported(src: np.ndarray, dst: np.ndarray) -> bool:
    """Whether an affine map predicts ``dst ~ src`` better than a rigid one, by spatial
    cross-validation of the given inliers: split at the median along each principal axis, fit
    both models (least squares) on one half and measure the median residual on the other, both
    ways. Matches of a rigid motion with spatially correlated errors (CT-MR) let an affine fit
    its noise, which then extrapolates badly to the other half; a real scaling or shear predicts
    the other half better.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if len(src) < 16:
        return False
    centred = src - src.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2]
    held = {"rigid": [], "affine": []}
    for axis in axes:
        proj = centred @ axis
        low = proj <= np.median(proj)
        for train in (low, ~low):
            test = ~train
            if train.sum() < 8 or test.sum() < 8:
                continue
            for kind in held:
                pm = fit_points(src[train], dst[train], kind, scale_mm=1e9, iterations=1)  # least squares
                held[kind].append(np.median(np.linalg.norm(src[test] @ pm.matrix.T + pm.offset - dst[test], axis=1)))
    if not held["affine"]:
        return False
    return bool(np.mean(held["affine"]) < np.mean(held["rigid"]))


def _result(
    corr: Correspondences,
    fit: tuple[np.ndarray, np.ndarray, np.ndarray],
    kind: str,
    moving_maps: EmbeddingMaps,
    points: np.ndarray,
    seconds: dict[str, float],
    to_moving: tuple[np.ndarray, np.ndarray] | None = None,
) -> RegistrationResult:
    """A :class:`RegistrationResult` from a fit of ``corr``; ``to_moving`` (a linear map) takes
    the correspondences' moving side into the moving space (the second pass matches into the
    moving image resampled by the first pass)."""
    matrix, offset, inliers = fit
    residual = np.linalg.norm(corr.fixed @ matrix.T + offset - corr.moving, axis=1)
    moving_pts = corr.moving
    if to_moving is not None:
        matrix, offset = compose((matrix, offset), to_moving)
        moving_pts = corr.moving @ to_moving[0].T + to_moving[1]
    centre = corr.fixed[inliers].mean(axis=0)
    return RegistrationResult(
        transform=make_transform(matrix, offset, kind, centre),
        kind=kind,
        n_points=corr.n_points,
        n_correspondences=len(corr.fixed),
        n_inliers=int(inliers.sum()),
        inlier_fraction=float(inliers.mean()),
        residual_mm=float(np.median(residual[inliers])),
        overlap_fraction=float(moving_maps.in_view(points @ matrix.T + offset).mean()) if len(points) else 0.0,
        refined=False,
        model_version=moving_maps.model_version,
        seconds=dict(seconds),
        fixed_points=corr.fixed,
        moving_points=moving_pts,
        inliers=inliers,
    )


def register_maps(
    fixed_maps: EmbeddingMaps,
    moving_maps: EmbeddingMaps,
    points: np.ndarray,
    kind: str = "rigid",
    config: RegistrationConfig | None = None,
    fixed_name: str = "<fixed>",
    moving_name: str = "<moving>",
) -> RegistrationResult:
    """One-pass registration from embedding maps and fixed-space query points (no second pass,
    no refinement: both need the images; see :class:`Registrar`).

    Args:
        fixed_maps, moving_maps: Embeddings of both images (same model).
        points: (N, 3) fixed-space world points to match (e.g. :func:`grid_points`).
        kind: ``"rigid"`` or ``"affine"``.
        fixed_name, moving_name: Names for error messages.

    Raises:
        RegistrationError: Different models, or too few correspondences / inliers.
    """
    pair = f"{fixed_name} -> {moving_name}"
    t0 = time.perf_counter()
    corr = match_grid(fixed_maps, moving_maps, points, config, pair)
    t1 = time.perf_counter()
    fit, fitted, note = fit_or_fall_back(corr, kind, config, pair)
    seconds = {"match": t1 - t0, "fit": time.perf_counter() - t1}
    result = _result(corr, fit, fitted, moving_maps, np.asarray(points, dtype=np.float64).reshape(-1, 3), seconds)
    result.note = note
    return result


def _rotation_deg(matrix: np.ndarray) -> float:
    """Rotation angle (degrees) of the rotation part of a linear map."""
    u, _, vt = np.linalg.svd(matrix)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


class Registrar:
    """Registers moving images onto one fixed image (the fixed image is embedded once).

    Two passes when the images are at hand: the first (rigid) estimate de-rotates the moving
    image (resampled onto the fixed grid, its field of view kept as the valid region), which is
    embedded and matched again; the final fit of that second pass is composed with the first.
    The embeddings are not rotation invariant, so large rotations bias the first pass's matches
    by a few mm; the second pass sees almost none. It is skipped when the first rotation is
    below ``config.second_pass_deg``.

    Args:
        embedder: Any :class:`Embedder` (in-process torch or Triton).
        fixed: The fixed image.
        fixed_modality: ``"CT"`` or ``"MR"``; ``None`` detects it.
        config: :class:`RegistrationConfig` for every pair; ``None``: the defaults, or
            :meth:`RegistrationConfig.cross_modality` for a moving image of the other modality.
        fixed_name: Name of the fixed image in messages.
        fixed_maps: Precomputed embeddings of ``fixed`` (skips embedding it).
    """

    def __init__(
        self,
        embedder: Embedder | None,
        fixed: sitk.Image,
        fixed_modality: str | None = None,
        config: RegistrationConfig | None = None,
        fixed_name: str = "<fixed>",
        fixed_maps: EmbeddingMaps | None = None,
    ) -> None:
        self.embedder = embedder
        self._config = config
        self.config = config or RegistrationConfig()
        self.fixed = fixed
        self.fixed_name = fixed_name
        self.fixed_modality = detect_modality(fixed, fixed_name, fixed_modality)
        t0 = time.perf_counter()
        if fixed_maps is None:
            if embedder is None:
                raise ValueError("Registrar needs an embedder or the fixed image's maps")
            fixed_maps = embed_image(fixed, embedder, self.fixed_modality)
        self.fixed_maps = fixed_maps
        self.embed_seconds = time.perf_counter() - t0
        self._mask = body_mask(fixed, self.fixed_modality, self.config.ct_body_hu)
        self._points: dict[tuple[int, float], np.ndarray] = {}
        self.points = self.grid(self.config)

    def config_for(self, moving_modality: str | None) -> RegistrationConfig:
        """The configuration for a moving image of ``moving_modality``."""
        if self._config is not None or moving_modality in (None, self.fixed_modality):
            return self.config
        return RegistrationConfig.cross_modality()

    def grid(self, config: RegistrationConfig) -> np.ndarray:
        """The fixed body grid points of ``config`` (cached)."""
        key = (config.max_points, config.min_spacing_mm)
        if key not in self._points:
            pts = grid_points(*self._mask, config.max_points, config.min_spacing_mm)
            if len(pts) == 0:
                raise RegistrationError(f"{self.fixed_name}: no body voxels to place registration points on")
            self._points[key] = pts
        return self._points[key]

    @property
    def model_version(self) -> str:
        return self.fixed_maps.model_version

    def register(
        self,
        moving: sitk.Image | None,
        kind: str = "rigid",
        moving_modality: str | None = None,
        refine: bool = False,
        moving_name: str = "<moving>",
        moving_maps: EmbeddingMaps | None = None,
    ) -> RegistrationResult:
        """Registers ``moving`` onto the fixed image.

        Args:
            moving: The moving image; ``None`` with ``moving_maps`` gives a one-pass result
                without refinement.
            kind: ``"rigid"`` or ``"affine"``.
            moving_modality: ``"CT"``/``"MR"``; ``None`` detects it.
            refine: Run the short MI refinement from the landmark transform.
            moving_maps: Precomputed embeddings of ``moving``.

        Returns:
            A :class:`RegistrationResult` (transform fixed -> moving).

        Raises:
            RegistrationError: Too few correspondences (one line naming both images).
        """
        refine_kinds = (kind,) if refine else ()
        out = self.register_many(moving, (kind,), moving_modality, refine_kinds, moving_name, moving_maps)
        result = out[f"{kind}+refine" if refine else kind]
        if isinstance(result, RegistrationError):
            raise result
        return result

    def register_many(
        self,
        moving: sitk.Image | None,
        kinds: tuple[str, ...] = ("rigid", "affine"),
        moving_modality: str | None = None,
        refine_kinds: tuple[str, ...] = (),
        moving_name: str = "<moving>",
        moving_maps: EmbeddingMaps | None = None,
    ) -> dict[str, RegistrationResult | RegistrationError]:
        """Several transform kinds from one set of matches (see :meth:`register`).

        Returns:
            ``{kind: result}``, plus ``{kind + "+refine": result}`` for each of ``refine_kinds``.
            A kind whose fit fails (too few inliers, an affine fit of a flat point set) maps to
            its :class:`RegistrationError` instead; the other kinds are still returned.

        Raises:
            RegistrationError: Too few correspondences, or every kind failed.
        """
        for k in (*kinds, *refine_kinds):
            if k not in KINDS:
                raise ValueError(f"unknown transform kind {k!r}; expected one of {', '.join(KINDS)}")
        if moving is None and (moving_maps is None or refine_kinds):
            raise ValueError("register needs the moving image (or its maps, without refinement)")
        pair = f"{self.fixed_name} -> {moving_name}"
        t0 = time.perf_counter()
        mod = detect_modality(moving, moving_name, moving_modality) if moving is not None else moving_modality
        cfg = self.config_for(mod)
        points = self.grid(cfg)
        if moving_maps is None:
            if self.embedder is None:
                raise ValueError("Registrar has no embedder for the moving image")
            moving_maps = embed_image(moving, self.embedder, mod)
        seconds = {"embed_fixed": self.embed_seconds, "embed_moving": time.perf_counter() - t0}
        _check_models(self.fixed_maps, moving_maps, pair)
        corr, first, more = self._two_pass(moving, mod, moving_maps, pair, cfg, points)
        seconds.update(more)
        results: dict[str, RegistrationResult | RegistrationError] = {}
        for kind in dict.fromkeys((*kinds, *refine_kinds)):
            t0 = time.perf_counter()
            try:
                fit, fitted, note = fit_or_fall_back(corr, kind, cfg, pair)
            except RegistrationError as e:
                results[kind] = e
                continue
            results[kind] = _result(corr, fit, fitted, moving_maps, points,
                                    {**seconds, "fit": time.perf_counter() - t0}, first)
            results[kind].note = note
        for kind in refine_kinds:
            from uae_ray.tasks.mi import mi_register

            base = results[kind]
            if isinstance(base, RegistrationError):
                results[f"{kind}+refine"] = base
                continue
            t0 = time.perf_counter()
            refined = mi_register(
                self.fixed, moving, base.transform, base.kind, self.fixed_modality, mod or "CT", seed=cfg.seed,
                iterations=cfg.refine_iterations, spacing_mm=cfg.refine_spacing_mm, threads=cfg.refine_threads,
            )
            results[f"{kind}+refine"] = RegistrationResult(
                **{**base.__dict__, "transform": refined, "refined": True,
                   "seconds": {**base.seconds, "refine": time.perf_counter() - t0}}
            )
        out = {k: v for k, v in results.items() if k in kinds or k.endswith("+refine")}
        if all(isinstance(v, RegistrationError) for v in out.values()):
            raise next(iter(out.values()))
        return out

    def _two_pass(
        self, moving: sitk.Image | None, mod: str | None, moving_maps: EmbeddingMaps, pair: str,
        cfg: RegistrationConfig, pts: np.ndarray,
    ) -> tuple[Correspondences, tuple[np.ndarray, np.ndarray] | None, dict[str, float]]:
        """The final correspondences, and the first-pass rigid map when a second pass ran.

        The first pass matches every ``coarse_every``-th grid point over the whole moving image
        (all of them when that gives too few matches for a first estimate, e.g. a small
        overlap), and a rigid fit of those predicts where the other points lie. With a large
        rotation the moving image is then de-rotated and the central ``second_points`` (all by
        default for CT-MR) are matched into it within ``second_window_mm`` (second pass);
        otherwise (or without the images) the rest of the grid is matched in the moving image
        within ``window_mm`` of the prediction. When a second pass may follow, the first pass
        finds voxel-precise matches only (no sub-voxel refinement: the second pass supersedes
        them), and accepts a first estimate from ``min_correspondences`` matches (else twice
        that); should no second pass run after all, every point is matched again, refined.
        """
        out: dict[str, float] = {"match": 0.0}
        need = max(cfg.min_correspondences, 4)
        second = moving is not None and self.embedder is not None and cfg.second_pass_deg is not None
        step = cfg.coarse_every if len(pts) >= cfg.coarse_every * 2 * need else 1
        coarse_idx = np.arange(0, len(pts), step)
        coarse_cfg = replace(cfg, matcher=replace(cfg.matcher, subvoxel=0)) if second else cfg

        def match_into(maps: EmbeddingMaps, idx: np.ndarray, key: str, guess: np.ndarray | None = None,
                       window: float | None = None, config: RegistrationConfig = cfg) -> Correspondences:
            t0 = time.perf_counter()
            corr = _match(self.fixed_maps, maps, pts[idx], config, guess, window)
            out[key] = out.get(key, 0.0) + time.perf_counter() - t0
            return corr

        def merge(a: Correspondences, b: Correspondences) -> Correspondences:
            return Correspondences(a.n_points + b.n_points, np.concatenate([a.fixed, b.fixed]),
                                   np.concatenate([a.moving, b.moving]))

        corr = match_into(moving_maps, coarse_idx, "match", config=coarse_cfg)
        rest = np.setdiff1d(np.arange(len(pts)), coarse_idx)
        if len(rest) and len(corr.fixed) < (1 if second else 2) * need:  # too few for a first estimate
            corr, rest = merge(corr, match_into(moving_maps, rest, "match", config=coarse_cfg)), rest[:0]
        first = None
        if len(corr.fixed) >= need and (len(rest) or second):
            try:
                first = fit_correspondences(corr, "rigid", cfg, pair)[:2]
            except RegistrationError:
                first = None
        if second and first is not None and _rotation_deg(first[0]) >= cfg.second_pass_deg:
            t0 = time.perf_counter()
            # the network's receptive field needs context beyond the searched box
            idx2 = _central(pts, cfg.second_points)
            margin = cfg.second_window_mm + cfg.context_mm
            net = self.embedder.config
            moved = _resample_nan(self.fixed, moving, make_transform(*first, "rigid"), net.input_spacing_mm,
                                  pts[idx2], margin, net.pad_multiple)
            moved_maps = embed_image(moved, self.embedder, mod)
            out["embed_second"] = time.perf_counter() - t0
            # The moved image lies on the fixed grid: each point is predicted where it is.
            corr2 = match_into(moved_maps, idx2, "match_second", pts[idx2], cfg.second_window_mm)
            if len(corr2.fixed) >= need:
                return corr2, first, out
            logger.warning("%s: second pass found %d correspondences; keeping the first", pair, len(corr2.fixed))
        if coarse_cfg is not cfg:  # the first pass was voxel-precise: match every point again, refined
            corr, rest = Correspondences(0, pts[:0], pts[:0]), np.arange(len(pts))
        if len(rest):
            guess = None if first is None else pts[rest] @ first[0].T + first[1]
            corr = merge(corr, match_into(moving_maps, rest, "match", guess))
        return _check_count(corr, cfg, pair), None, out


def _central(points: np.ndarray, count: int | None) -> np.ndarray:
    """Indices of the ``count`` points nearest the centre of their box, in the box's own
    proportions (so that the smallest box around them is a scaled-down copy of it); all of
    them when ``count`` is ``None`` or not smaller."""
    if count is None or count >= len(points):
        return np.arange(len(points))
    lo, hi = points.min(axis=0), points.max(axis=0)
    dist = np.max(np.abs(points - (lo + hi) / 2.0) / np.maximum((hi - lo) / 2.0, 1e-6), axis=1)
    return np.sort(np.argsort(dist, kind="stable")[:count])


def _resample_nan(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, spacing_mm: float,
                  points: np.ndarray, margin_mm: float, multiple: int = 1) -> sitk.Image:
    """``moving`` resampled through ``transform`` onto an isotropic ``spacing_mm`` grid over the
    fixed image (the network's input spacing, so embedding it resamples almost nothing), cropped
    to the box of ``points`` plus ``margin_mm`` (all that the second pass searches), float32, NaN
    outside the moving field of view (so the embedding's valid mask keeps that field of view).

    Each size is rounded to the nearest multiple of ``multiple`` (the network pads its input to
    one): trimmed from the side with the wider margin, or grown, instead of padded with air.
    """
    from uae_ray.volume import Grid, model_grid, resample_to_grid

    full = model_grid(fixed, spacing_mm=spacing_mm, pad_multiple=1)
    origin, size = np.asarray(full.origin), np.asarray(full.size)
    p_lo, p_hi = (points.min(axis=0) - origin) / spacing_mm, (points.max(axis=0) - origin) / spacing_mm
    lo = np.clip(np.floor(p_lo - margin_mm / spacing_mm), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(p_hi + margin_mm / spacing_mm), lo, size - 1).astype(int)
    room_lo, room_hi = p_lo - lo, hi - p_hi  # voxels between the points' box and the crop's faces
    n = hi - lo + 1
    target = np.maximum(multiple, np.rint(n / multiple) * multiple).astype(int)
    target = np.where(n - target > np.floor(room_lo) + np.floor(room_hi), target + multiple, target)  # keep the points
    trim, grow = np.maximum(n - target, 0), np.maximum(target - n, 0)
    from_lo = np.clip(np.rint((trim + room_lo - room_hi) / 2), trim - np.floor(room_hi), np.floor(room_lo))
    lo = lo + np.clip(from_lo, 0, trim).astype(int) - grow // 2
    n = target
    grid = Grid(tuple(origin + lo * spacing_mm), full.spacing, full.direction, tuple(int(v) for v in n))
    return resample_to_grid(moving, grid, sitk.sitkLinear, float("nan"), sitk.sitkFloat32, transform)


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    embedder: Embedder,
    kind: str = "rigid",
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    refine: bool = False,
    config: RegistrationConfig | None = None,
    fixed_name: str = "<fixed>",
    moving_name: str = "<moving>",
) -> RegistrationResult:
    """Registers one pair: embeds both images, matches a body grid, fits ``kind`` (see the
    module docstring). The transform maps fixed-space points to moving-space points."""
    registrar = Registrar(embedder, fixed, fixed_modality, config, fixed_name)
    return registrar.register(moving, kind, moving_modality, refine, moving_name)


def check_modality(image: sitk.Image, source: str, explicit: str | None = None) -> str:
    """The modality of ``image``: ``explicit`` when given and consistent with the image, else
    the detected one (:func:`~uae_ray.volume.detect_modality`).

    Raises:
        RegistrationError: ``explicit`` contradicts the image (its DICOM Modality tag, or its
            intensities: a CT flag on an image without Hounsfield-unit air, an MR flag on one
            with it): ``"<source>: ..."``, one line.
        VolumeError: ``explicit`` is neither CT nor MR.
    """
    detected = detect_modality(image, source)
    if explicit is None:
        return detected
    flag = detect_modality(image, source, explicit)
    if flag != detected:
        how = "its DICOM Modality tag" if image.HasMetaDataKey("0008|0060") else "its intensities"
        raise RegistrationError(f"{source}: modality given as {flag} but the image is {detected} by {how}")
    return flag


def resample_moving(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                    modality: str = "CT") -> sitk.Image:
    """The moving image resampled onto the fixed grid through ``transform`` (fixed -> moving);
    outside the moving field of view: air (-1024) for CT, 0 for MR. Pixel type of ``moving``."""
    default = -1024.0 if modality == "CT" else 0.0
    return sitk.Resample(moving, fixed, transform, sitk.sitkLinear, default, moving.GetPixelID())


__all__ = [
    "Correspondences",
    "FlatOverlapError",
    "RegistrationConfig",
    "RegistrationError",
    "RegistrationResult",
    "Registrar",
    "body_mask",
    "check_modality",
    "fit_correspondences",
    "fit_or_fall_back",
    "grid_points",
    "match_grid",
    "matrix_offset",
    "ransac_fit",
    "register_images",
    "register_maps",
    "resample_moving",
]
