"""RANSAC over minimal point sets (rigid: Kabsch, affine: least squares), batched in numpy."""

from __future__ import annotations

import numpy as np

from uae_ray.matching import fit_points


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
