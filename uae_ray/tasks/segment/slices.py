"""Orientation (every target is segmented in LPS) and intensity windows of slices."""

from __future__ import annotations

import SimpleITK as sitk
import numpy as np

from uae_ray.models.sam2d import Sam2DConfig
from uae_ray.tasks.segment.segmenter import ORIENTATION


def orient(image: sitk.Image) -> sitk.Image:
    """The image reoriented to LPS (axes permuted / flipped; voxel values and centres unchanged)."""
    return sitk.DICOMOrient(image, ORIENTATION)


def restore_orientation(oriented: sitk.Image, target: sitk.Image) -> sitk.Image:
    """A map on the oriented grid put back on ``target``'s grid (exact: same voxel centres).

    Raises:
        ValueError: the grids do not hold the same voxels.
    """
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(target.GetDirection())
    back = sitk.DICOMOrient(oriented, code)
    if back.GetSize() != target.GetSize():
        raise ValueError(f"label map size {back.GetSize()} != target size {target.GetSize()} after reorienting")
    a = np.asarray(back.GetOrigin())
    b = np.asarray(target.GetOrigin())
    tol = 1e-3 * max(min(target.GetSpacing()), 1e-3)
    if np.abs(a - b).max() > max(tol, 1e-4):
        raise ValueError(f"label map origin {tuple(a)} != target origin {tuple(b)} after reorienting")
    back.CopyInformation(target)  # exactly the target's origin, spacing and direction
    return back


def window_range(array: np.ndarray, modality: str, config: Sam2DConfig) -> tuple[float, float]:
    """Intensity range mapped to [0, 255]: the model's CT window, or the MR percentiles of the
    volume (a subsample of up to 2 M voxels; NaN ignored)."""
    if str(modality).upper() == "CT":
        return float(config.ct_window[0]), float(config.ct_window[1])
    flat = np.asarray(array).reshape(-1)
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000 + 1]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(flat, config.mr_percentiles)
    return float(lo), float(max(hi, lo + 1e-6))


def window_slices(slices: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Intensities clipped to ``[lo, hi]`` and mapped to [0, 255] (float32; NaN -> 0)."""
    x = (np.asarray(slices, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.nan_to_num(np.clip(x, 0.0, 255.0), nan=0.0)
