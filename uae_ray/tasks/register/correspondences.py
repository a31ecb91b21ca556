"""Matching the fixed grid into the moving image and fitting a transform to the correspondences."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from uae_ray.matching import EmbeddingMaps, find_points, fit_points, well_spread
from uae_ray.tasks.register.config import (
    FlatOverlapError,
    RegistrationConfig,
    RegistrationError,
    RegistrationResult,
)
from uae_ray.tasks.register.robust import ransac_fit
from uae_ray.tasks.transforms import compose, KINDS, make_transform

logger = logging.getLogger(__name__)


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
