"""Robust fits of point correspondences: translation, rigid and affine maps (IRLS).

All points are world (LPS, mm) arrays (N, 3). A fitted map sends ``src`` points to ``dst``
points: ``dst ~ src @ matrix.T + offset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PointMap:
    """``y = matrix @ x + offset`` for world points; ``kind`` is translation, rigid or affine.

    Attributes:
        matrix: (3, 3) linear part.
        offset: (3,) translation (mm).
        kind: ``"translation"``, ``"rigid"`` or ``"affine"``.
        inliers: (N,) bool: the correspondences that kept full weight in the last iteration.
        residual_mm: Median residual of the inliers (mm).
    """

    matrix: np.ndarray
    offset: np.ndarray
    kind: str
    inliers: np.ndarray
    residual_mm: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64).reshape(-1, 3) @ self.matrix.T + self.offset


def _weighted_affine(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.hstack([src, np.ones((len(src), 1))]) * np.sqrt(w)[:, None]
    sol, *_ = np.linalg.lstsq(x, dst * np.sqrt(w)[:, None], rcond=None)
    return sol[:3].T, sol[3]


def _weighted_rigid(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Kabsch: the rotation and translation minimising ``sum w |R x + t - y|^2``."""
    ws = w / w.sum()
    cs, cd = ws @ src, ws @ dst
    h = ((src - cs) * ws[:, None]).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, cd - rot @ cs


def _weighted_translation(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.eye(3), (w / w.sum()) @ (dst - src)


_SOLVERS = {"translation": _weighted_translation, "rigid": _weighted_rigid, "affine": _weighted_affine}
_MIN_POINTS = {"translation": 1, "rigid": 3, "affine": 4}


def well_spread(points: np.ndarray, min_extent_mm: float = 1.0) -> bool:
    """True if the points span 3D (third principal extent at least ``min_extent_mm``)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) < 4:
        return False
    sv = np.linalg.svd(p - p.mean(axis=0), compute_uv=False) / np.sqrt(len(p))
    return bool(sv[-1] >= min_extent_mm)


def fit_points(
    src: np.ndarray, dst: np.ndarray, kind: str = "affine", scale_mm: float = 4.0, iterations: int = 10
) -> PointMap:
    """Robust least-squares fit of ``dst ~ map(src)`` by iteratively reweighted least squares.

    Tukey's biweight on the residuals with a cut-off of ``max(4.685 * 1.4826 * MAD, scale_mm)``,
    so that a minority of wrong correspondences gets zero weight.

    Args:
        src: (N, 3) source points.
        dst: (N, 3) destination points.
        kind: ``"translation"``, ``"rigid"`` or ``"affine"``.
        scale_mm: Smallest residual cut-off (mm): the expected precision of a good match.
        iterations: IRLS iterations.

    Returns:
        The fitted :class:`PointMap`.

    Raises:
        ValueError: For an unknown kind, mismatched shapes or too few points for the kind.
    """
    if kind not in _SOLVERS:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {sorted(_SOLVERS)}")
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst differ in shape: {src.shape} vs {dst.shape}")
    if len(src) < _MIN_POINTS[kind]:
        raise ValueError(f"a {kind} fit needs at least {_MIN_POINTS[kind]} points; got {len(src)}")
    solve = _SOLVERS[kind]
    # Start from the median translation (robust to up to half wrong matches); a wide first
    # cut-off leaves room for the rotation / scaling that a translation cannot explain.
    t0 = np.median(dst - src, axis=0)
    r0 = np.linalg.norm(src + t0 - dst, axis=1)
    w = _tukey(r0, _cutoff(r0, 4.0 * scale_mm))
    if np.count_nonzero(w) < _MIN_POINTS[kind]:
        w = np.ones(len(src))
    matrix, offset = solve(src, dst, w)
    for _ in range(iterations):
        r = np.linalg.norm(src @ matrix.T + offset - dst, axis=1)
        w_new = _tukey(r, _cutoff(r, scale_mm))
        if np.count_nonzero(w_new) < _MIN_POINTS[kind]:
            break
        w = w_new
        matrix, offset = solve(src, dst, w)
    r = np.linalg.norm(src @ matrix.T + offset - dst, axis=1)
    inliers = r <= _cutoff(r, scale_mm)
    res = float(np.median(r[inliers])) if inliers.any() else float("inf")
    return PointMap(matrix=matrix, offset=offset, kind=kind, inliers=inliers, residual_mm=res)


def _cutoff(r: np.ndarray, floor: float) -> float:
    mad = np.median(np.abs(r - np.median(r)))
    return float(max(4.685 * 1.4826 * mad, floor))


def _tukey(r: np.ndarray, c: float) -> np.ndarray:
    u = np.clip(r / c, 0.0, 1.0)
    return (1.0 - u**2) ** 2


__all__ = ["PointMap", "fit_points", "well_spread"]
