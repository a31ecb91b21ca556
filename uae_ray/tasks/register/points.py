"""Where registration points go: a coarse body mask of the fixed image and a grid on it."""

from __future__ import annotations

import SimpleITK as sitk
import numpy as np

from uae_ray.tasks.register.config import MASK_SPACING_MM
from uae_ray.volume import Grid


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
