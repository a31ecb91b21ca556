"""Robust point fits recover known maps despite a minority of wrong correspondences."""

from __future__ import annotations

import numpy as np
import pytest

from uae_ray.matching.fit import fit_points, well_spread
from uae_ray.volume.rotation import rotation_matrix


def _data(n: int = 60, outliers: float = 0.3, noise: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    src = rng.uniform(-40, 40, (n, 3))
    matrix = rotation_matrix(np.deg2rad([10.0, -20.0, 5.0])) @ np.diag([1.1, 0.9, 1.05])
    offset = np.array([12.0, -7.0, 30.0])
    dst = src @ matrix.T + offset + rng.normal(0, noise, (n, 3))
    bad = rng.random(n) < outliers
    dst[bad] += rng.uniform(-80, 80, (int(bad.sum()), 3))
    return src, dst, matrix, offset, bad


def test_affine_ignores_outliers() -> None:
    src, dst, matrix, offset, bad = _data()
    fit = fit_points(src, dst, "affine", scale_mm=2.0)
    probe = np.array([[0.0, 0.0, 0.0], [30.0, -20.0, 10.0]])
    np.testing.assert_allclose(fit(probe), probe @ matrix.T + offset, atol=0.5)
    assert not fit.inliers[bad].any() and fit.inliers[~bad].mean() > 0.9
    assert fit.residual_mm < 1.0


def test_rigid_is_a_rotation() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(-30, 30, (20, 3))
    rot = rotation_matrix(np.deg2rad([25.0, 0.0, -15.0]))
    dst = src @ rot.T + [1.0, 2.0, 3.0]
    dst[:4] += 50.0  # four wrong matches
    fit = fit_points(src, dst, "rigid", scale_mm=1.0)
    np.testing.assert_allclose(fit.matrix, rot, atol=1e-6)
    np.testing.assert_allclose(fit.offset, [1.0, 2.0, 3.0], atol=1e-5)
    assert np.isclose(np.linalg.det(fit.matrix), 1.0)


def test_translation_is_robust() -> None:
    src = np.zeros((9, 3))
    dst = np.tile([5.0, 0.0, -2.0], (9, 1))
    dst[0] = [100.0, 100.0, 100.0]
    fit = fit_points(src, dst, "translation")
    np.testing.assert_allclose(fit.offset, [5.0, 0.0, -2.0], atol=1e-9)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown transform kind"):
        fit_points(np.zeros((5, 3)), np.zeros((5, 3)), "spline")
    with pytest.raises(ValueError, match="at least 4"):
        fit_points(np.zeros((3, 3)), np.zeros((3, 3)), "affine")
    with pytest.raises(ValueError, match="differ in shape"):
        fit_points(np.zeros((5, 3)), np.zeros((4, 3)), "affine")


def test_well_spread() -> None:
    cube = np.stack(np.meshgrid(*[np.array([-8.0, 0.0, 8.0])] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert well_spread(cube, 2.0)
    flat = cube.copy()
    flat[:, 2] = 0.0
    assert not well_spread(flat, 2.0)
