"""Synthetic warps of a CT with exact point correspondences (for the accuracy benchmark).

The warped image ``W`` is resampled from the original ``I`` with a transform ``T`` that maps
warped-world points to original-world points (ITK's resampling convention):
``W(q) = f(I(T(q)))`` where ``f`` is an intensity change. ``T = A o B``: an elastic B-spline
``B`` (applied first) followed by a random affine ``A`` about the image centre. The ground truth
for an original point ``p`` is the ``q`` with ``T(q) = p``, found by a Newton-type fixed-point
iteration (exact to ~1e-6 mm, see :meth:`SyntheticWarp.to_warped`).
All points are world (LPS, mm) arrays (N, 3) in x, y, z order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.volume import Grid

from uae_ray.volume.rotation import rotation_matrix

logger = logging.getLogger(__name__)


@dataclass
class SyntheticWarp:
    """A warped image and the exact geometric relation to its original.

    Attributes:
        image: The warped image (same pixel type as the original, cropped field of view).
        transform: ``T``: warped-world -> original-world (used to resample ``image``).
        params: The random parameters drawn (for logging / reports).
    """

    image: sitk.Image
    transform: sitk.Transform
    params: dict[str, Any] = field(default_factory=dict)
    _linear_inv: np.ndarray | None = None  # 3x3 inverse of the affine's matrix (Newton step)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map warped-world points to original-world points (``T``).

        Args:
            points: (N, 3) world points (x, y, z, mm) in the warped image's space.

        Returns:
            (N, 3) world points in the original image's space.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.array([self.transform.TransformPoint(tuple(p)) for p in pts], dtype=np.float64).reshape(-1, 3)

    def to_warped(self, points: np.ndarray, tol_mm: float = 1e-6, max_iter: int = 50) -> np.ndarray:
        """Map original-world points to warped-world points (``T^-1``, numerically exact).

        Newton-type iteration ``q <- q + M^-1 (p - T(q))`` with ``M`` the affine's matrix (the
        elastic part is a small, smooth perturbation, so this contracts quickly).

        Args:
            points: (N, 3) world points (x, y, z, mm) in the original image's space.
            tol_mm: Stop when every residual ``|T(q) - p|`` is below this.
            max_iter: Iteration limit.

        Returns:
            (N, 3) world points ``q`` with ``T(q) = p``.

        Raises:
            RuntimeError: If the iteration does not reach ``0.01 mm`` for every point.
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        minv = self._linear_inv if self._linear_inv is not None else np.eye(3)
        q = p.copy()
        for _ in range(max_iter):
            r = p - self.to_original(q)
            if np.all(np.linalg.norm(r, axis=1) < tol_mm):
                break
            q = q + r @ minv.T
        res = self.inversion_residual(q, p)
        if res.size and res.max() >= 0.01:
            raise RuntimeError(f"synthetic warp inversion did not converge (max residual {res.max():.4f} mm)")
        return q

    def inversion_residual(self, warped_points: np.ndarray, original_points: np.ndarray) -> np.ndarray:
        """Residuals ``|T(q) - p|`` (mm), shape (N,)."""
        return np.linalg.norm(self.to_original(warped_points) - np.asarray(original_points).reshape(-1, 3), axis=1)


def _physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    corners = corners * (size - 1)
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def _bspline(image: sitk.Image, rng: np.random.Generator, elastic_mm: float, mesh: int) -> sitk.BSplineTransform:
    lo, hi = _physical_bounds(image)
    margin = 0.3 * (hi - lo) + 20.0
    lo, hi = lo - margin, hi + margin
    ref = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    ref.SetOrigin(tuple(lo))
    ref.SetSpacing(tuple((hi - lo) / 7.0))
    tx = sitk.BSplineTransformInitializer(ref, [mesh] * 3, 3)
    n = mesh + 3
    coeff = rng.normal(0.0, elastic_mm, size=(3, n, n, n))
    coeff = np.clip(coeff, -2.5 * elastic_mm, 2.5 * elastic_mm)
    # Zero the outer two rings so the displacement vanishes smoothly at the domain border
    # (ITK returns the point unchanged outside the B-spline support).
    inner = np.zeros((n, n, n), dtype=bool)
    inner[2:-2, 2:-2, 2:-2] = True
    coeff[:, ~inner] = 0.0
    tx.SetParameters(tuple(coeff.reshape(-1)))
    return tx


def synthetic_warp(
    image: sitk.Image,
    seed: int | np.random.Generator = 0,
    max_rotation_deg: float = 10.0,
    max_scale: float = 0.10,
    max_translation_mm: float = 20.0,
    elastic_mm: float = 3.0,
    elastic_mesh: int = 4,
    max_fov_crop: float = 0.15,
    intensity: bool = True,
    background: float | None = None,
) -> SyntheticWarp:
    """Warp an image with a random affine + elastic transform, intensity change and FOV crop.

    Args:
        image: Original 3D image (CT in HU; any pixel type).
        seed: Seed or ``np.random.Generator`` (per-call RNG; no global state).
        max_rotation_deg: Maximum absolute rotation about each axis (degrees).
        max_scale: Scale factors are drawn per axis from ``1 +- max_scale``.
        max_translation_mm: Maximum absolute translation per axis (mm).
        elastic_mm: Standard deviation of the B-spline control-point displacements (mm).
        elastic_mesh: B-spline mesh size per axis (over the image extent plus margins).
        max_fov_crop: Each end of each axis loses a fraction in [0, max_fov_crop] of the field
            of view with probability 1/2.
        intensity: Apply a random intensity scale/shift and Gaussian noise.
        background: Value outside the original field of view (default: the image minimum,
            i.e. air for CT).

    Returns:
        A :class:`SyntheticWarp` (warped image, ``T`` warped->original, parameters).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if image.GetDimension() != 3:
        raise ValueError(f"synthetic_warp needs a 3D image; got {image.GetDimension()}D")
    lo, hi = _physical_bounds(image)
    centre = (lo + hi) / 2.0

    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    scales = rng.uniform(1.0 - max_scale, 1.0 + max_scale, 3)
    translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    matrix = rotation_matrix(angles) @ np.diag(scales)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(centre))
    affine.SetMatrix(tuple(matrix.reshape(-1)))
    affine.SetTranslation(tuple(translation))
    bspline = _bspline(image, rng, elastic_mm, elastic_mesh)

    # CompositeTransform applies the last added transform first: T(q) = A(B(q)).
    transform = sitk.CompositeTransform(3)
    transform.AddTransform(affine)
    transform.AddTransform(bspline)

    # Output grid: the original grid with a cropped field of view.
    size = np.array(image.GetSize())
    start = np.zeros(3, dtype=int)
    stop = size.copy()
    for ax in range(3):
        for end in (0, 1):
            if rng.random() < 0.5:
                cut = int(rng.uniform(0.0, max_fov_crop) * size[ax])
                if end == 0:
                    start[ax] += cut
                else:
                    stop[ax] -= cut
    ref = sitk.Image([int(s) for s in stop - start], image.GetPixelID())
    ref.SetSpacing(image.GetSpacing())
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(image.TransformIndexToPhysicalPoint([int(s) for s in start]))

    arr = sitk.GetArrayViewFromImage(image)
    bg = float(arr.min()) if background is None else float(background)
    warped = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, transform, sitk.sitkLinear, bg, sitk.sitkFloat32)

    params: dict[str, Any] = {
        "rotation_deg": np.rad2deg(angles).tolist(),
        "scale": scales.tolist(),
        "translation_mm": translation.tolist(),
        "elastic_mm": elastic_mm,
        "fov_start_index": start.tolist(),
        "fov_size": (stop - start).tolist(),
    }
    if intensity:
        a = rng.uniform(0.95, 1.05)
        b = rng.uniform(-20.0, 20.0)
        sigma = rng.uniform(0.0, 15.0)
        w = sitk.GetArrayFromImage(warped)
        body = w > bg
        w[body] = a * w[body] + b + rng.normal(0.0, sigma, size=int(body.sum()))
        out = sitk.GetImageFromArray(w)
        out.CopyInformation(warped)
        warped = out
        params.update(intensity_scale=a, intensity_shift=b, noise_sigma=sigma)
    if image.GetPixelID() != sitk.sitkFloat32:
        warped = sitk.Cast(sitk.Round(warped) if hasattr(sitk, "Round") else warped, image.GetPixelID())
    return SyntheticWarp(image=warped, transform=transform, params=params, _linear_inv=np.linalg.inv(matrix))


def body_points(
    image: sitk.Image, n: int, rng: np.random.Generator, level: float = -300.0, margin_frac: float = 0.1,
    margin_vox: int = 0,
) -> np.ndarray:
    """Samples ``n`` world points at voxels brighter than ``level`` (CT: HU; inside the body),
    at least ``margin_frac`` of each axis (and one voxel) from the image border when
    ``margin_frac > 0``, else ``margin_vox`` voxels (at most a quarter of the axis).

    Returns:
        (n, 3) world points (LPS mm), or fewer if the body is small.
    """
    arr = sitk.GetArrayViewFromImage(image)  # z, y, x
    margin = [max(1, int(margin_frac * s)) if margin_frac > 0 else min(margin_vox, s // 4) for s in arr.shape]
    inner = arr[tuple(slice(m, s - m) for m, s in zip(margin, arr.shape))]
    zyx = np.argwhere(inner > level)
    if len(zyx) == 0:
        return np.zeros((0, 3))
    pick = zyx[rng.choice(len(zyx), size=min(n, len(zyx)), replace=False)] + np.array(margin)
    return Grid.from_image(image).index_to_world(pick[:, ::-1].astype(float))
