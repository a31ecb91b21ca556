"""Checks that an image is a usable 3D volume (shape, geometry, intensities).

Every failure raises :class:`~uae_ray.volume.errors.VolumeError` with a one-line message
``"<source>: <cause>"``.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from uae_ray.volume.errors import VolumeError

#: Accepted voxel spacing per axis, mm: ``MIN_SPACING_MM < s <= MAX_SPACING_MM``.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 50.0
#: Tolerance on ``D @ D.T == I`` for the direction matrix.
ORTHONORMAL_TOL = 1e-4

_INTEGER_PIXEL_IDS = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}


def is_integer_pixel_type(image: sitk.Image) -> bool:
    """True if ``image`` has a scalar integer pixel type."""
    return image.GetPixelID() in _INTEGER_PIXEL_IDS


def _fmt(values: tuple[float, ...]) -> str:
    return "x".join(f"{v:g}" for v in values)


def check_shape(image: sitk.Image, source: str) -> None:
    """Reject images that are not a scalar 3D volume with at least 2 voxels per axis.

    Raises:
        VolumeError: for 2D images (also 3D with one slice), 4D+ images, multi-component
            (vector / RGB) images and empty images (a zero size).
    """
    dim = image.GetDimension()
    size = tuple(image.GetSize())
    if any(s == 0 for s in size):
        raise VolumeError(source, f"empty image (size {_fmt(size)})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            source,
            f"multi-component image ({image.GetNumberOfComponentsPerPixel()} components per "
            f"voxel, {image.GetPixelIDTypeAsString()}); a scalar 3D volume is needed",
        )
    if dim > 3:
        raise VolumeError(source, f"{dim}D image (size {_fmt(size)}); a 3D volume is needed")
    if dim == 3 and max(size) < 2:
        raise VolumeError(source, f"a single voxel (size {_fmt(size)}); a 3D volume is needed")
    if dim < 3 or min(size) < 2:
        raise VolumeError(source, f"2D image (size {_fmt(size)}); a 3D volume is needed")


def check_geometry(image: sitk.Image, source: str) -> None:
    """Reject absurd spacing, non-finite origin and non-orthonormal direction.

    Raises:
        VolumeError: if a spacing is not finite or outside (0.05, 50] mm, the origin is not
            finite, or the direction matrix is not orthonormal (tolerance 1e-4).
    """
    spacing = tuple(image.GetSpacing())
    if not all(math.isfinite(s) and MIN_SPACING_MM < s <= MAX_SPACING_MM for s in spacing):
        raise VolumeError(
            source,
            f"absurd voxel spacing {_fmt(spacing)} mm (each must be in "
            f"({MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm)",
        )
    if not all(math.isfinite(v) for v in image.GetOrigin()):
        raise VolumeError(source, f"non-finite origin {image.GetOrigin()}")
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(d)) or not np.allclose(d @ d.T, np.eye(3), atol=ORTHONORMAL_TOL):
        flat = ", ".join(f"{v:.4g}" for v in d.ravel())
        raise VolumeError(source, f"direction matrix is not orthonormal ({flat})")


def check_intensities(image: sitk.Image, source: str) -> None:
    """Reject images with non-finite voxels or a single constant value.

    Raises:
        VolumeError: on NaN/inf voxels or a constant image.
    """
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise VolumeError(source, "image contains non-finite (NaN/inf) voxel values")
    vmin, vmax = array.min(), array.max()
    if vmin == vmax:
        raise VolumeError(source, f"constant image (every voxel is {vmin:g})")


def validate_image(image: sitk.Image, source: str) -> None:
    """Check that ``image`` is a usable scalar 3D volume.

    Args:
        image: The image as read.
        source: File name (or description) that starts the error message.

    Raises:
        VolumeError: for 2D / 4D / multi-component / empty / constant images, non-finite
            voxels, spacing outside (0.05, 50] mm and non-orthonormal directions.
    """
    source = str(source)
    check_shape(image, source)
    check_geometry(image, source)
    check_intensities(image, source)
