"""Intensity normalisation and preparation of a volume for the embedding network.

All normalised volumes live on one scale where air / background is -1:

* CT: HU clipped to [-1024, 3071] and mapped linearly,
  ``x = (hu + 1024) / 2047.5 - 1``, i.e. ``2 * (hu + 1024) / 4095 - 1``:
  -1024 HU -> -1, 0 HU (water) -> -0.4999, 3071 HU -> +1. This is the clip range of the
  published SAM/UAE code; the network itself adds narrow intensity windows (lung, soft tissue,
  bone) on top of this linear input, so soft-tissue contrast is not lost
  (``uae_ray.models.config.DEFAULT_WINDOWS``).
* MR: clipped at the 0.2 / 99.8 percentiles of the body voxels and mapped linearly to [-1, 1]
  (so the background falls on -1, like air in CT).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from uae_ray.volume.grid import Grid, model_grid, resample_to_grid
from uae_ray.volume.modality import Modality, parse_modality
from uae_ray.volume.validate import check_geometry, check_shape

logger = logging.getLogger(__name__)

CT_HU_MIN = -1024.0
CT_HU_MAX = 3071.0
MR_PERCENTILES = (0.2, 99.8)
#: Body voxels of an MR: above ``min + MR_BACKGROUND_FRACTION * (p99 - min)`` of the whole image.
MR_BACKGROUND_FRACTION = 0.05
#: Fewer body voxels than this: use all voxels for the MR percentiles.
_MR_MIN_BODY_VOXELS = 100
AIR_VALUE = -1.0


def _scale_to_unit(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip ``array`` to [lo, hi] and map it linearly onto [-1, 1] (float32, same shape)."""
    width = max(float(hi) - float(lo), 1e-6)
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(lo)
    out *= np.float32(2.0 / width)
    out -= np.float32(1.0)
    np.clip(out, -1.0, 1.0, out=out)  # float32 rounding could overshoot by one ulp
    return out


def normalize_ct(array_hu: np.ndarray) -> np.ndarray:
    """Normalise CT intensities (HU) to the network's scale.

    ``x = (clip(hu, -1024, 3071) + 1024) / 2047.5 - 1``: -1024 HU (air) -> -1.0,
    0 HU -> -0.49988, 3071 HU -> +1.0.

    Args:
        array_hu: Array of any shape (e.g. (Z, Y, X)) in Hounsfield units.

    Returns:
        float32 array of the same shape, values in [-1, 1].
    """
    return _scale_to_unit(array_hu, CT_HU_MIN, CT_HU_MAX)


def mr_intensity_range(array: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Intensity window (0.2 and 99.8 percentiles of the body) used to normalise an MR.

    Body voxels are those in ``mask`` if given, else those above a low background threshold:
    ``min + 0.05 * (p99 - min)`` over the whole array (air / background in MR is the darkest,
    near-constant part of the image). With fewer than 100 body voxels all voxels are used.

    Args:
        array: MR intensities, any shape (e.g. (Z, Y, X)).
        mask: Optional bool array of the same shape marking the voxels to use.

    Returns:
        ``(lo, hi)`` in the array's intensity units.
    """
    values = np.asarray(array, dtype=np.float32)
    if mask is not None:
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} != array shape {values.shape}")
        body = values[mask.astype(bool)]
    else:
        finite = values[np.isfinite(values)]
        vmin = float(finite.min()) if finite.size else 0.0
        p99 = float(np.percentile(finite, 99.0)) if finite.size else 0.0
        body = finite[finite > vmin + MR_BACKGROUND_FRACTION * (p99 - vmin)]
    if body.size < _MR_MIN_BODY_VOXELS:
        logger.debug("MR body has %d voxels; using all voxels for the percentiles", body.size)
        body = values[np.isfinite(values)]
    if body.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(body, MR_PERCENTILES)
    return float(lo), float(hi)


def normalize_mr(array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise MR intensities: clip to the body's 0.2/99.8 percentiles, map to [-1, 1].

    Args:
        array: MR intensities, any shape (e.g. (Z, Y, X)).
        mask: Optional bool array (same shape) of body voxels for the percentiles; default: the
            voxels above a low background threshold (see :func:`mr_intensity_range`).

    Returns:
        float32 array of the same shape in [-1, 1]; background maps to -1.
    """
    lo, hi = mr_intensity_range(array, mask)
    return _scale_to_unit(array, lo, hi)


def normalize_intensities(array: np.ndarray, modality: str) -> np.ndarray:
    """Apply :func:`normalize_ct` or :func:`normalize_mr` according to ``modality`` ("CT"/"MR")."""
    mod = parse_modality(modality, "normalize_intensities")
    return normalize_ct(array) if mod == "CT" else normalize_mr(array)


@dataclass(frozen=True, eq=False)
class PreparedVolume:
    """A volume ready for the embedding network.

    Attributes:
        array: (Z, Y, X) float32 normalised intensities on ``grid``; -1 (air) outside the
            original field of view.
        grid: The model grid (identity direction, isotropic spacing, size a multiple of the
            pad multiple); ``grid.size`` is (X, Y, Z).
        modality: "CT" or "MR".
        valid: (Z, Y, X) bool, True where the voxel lies inside the original image.
    """

    array: np.ndarray
    grid: Grid
    modality: Modality
    valid: np.ndarray


def prepare_volume(
    image: sitk.Image, modality: str, spacing_mm: float = 2.0, pad_multiple: int = 16
) -> PreparedVolume:
    """Normalise an image and resample it (linear) onto its model grid.

    Intensities are normalised on the native grid (so MR percentiles come from the native
    voxels), then resampled with linear interpolation onto :func:`model_grid`. A model voxel is
    ``valid`` when its centre lies inside the original image (ITK's inside test: within half a
    voxel of the outer voxel centres); other voxels hold the air value -1.

    Args:
        image: 3D image (CT in HU, or MR), any pixel type and orientation.
        modality: "CT" or "MR" (case-insensitive).
        spacing_mm: Isotropic spacing of the model grid, mm.
        pad_multiple: Model grid sizes are multiples of this.

    Returns:
        A :class:`PreparedVolume`.

    Raises:
        VolumeError: unknown modality, or an image that is not a scalar 3D volume with sane
            geometry (see :func:`uae_ray.volume.validate_image`).
    """
    mod = parse_modality(modality, "prepare_volume")
    check_shape(image, "prepare_volume")
    check_geometry(image, "prepare_volume")
    native = sitk.GetArrayViewFromImage(image)  # (Z, Y, X)
    normalised = sitk.GetImageFromArray(normalize_intensities(native, mod))
    normalised.CopyInformation(image)
    grid = model_grid(image, spacing_mm=spacing_mm, pad_multiple=pad_multiple)
    resampled = resample_to_grid(
        normalised,
        grid,
        sitk.sitkLinear,
        default_value=float("nan"),
        output_pixel_type=sitk.sitkFloat32,
    )
    array = sitk.GetArrayFromImage(resampled)  # (Z, Y, X) float32
    valid = np.isfinite(array)
    array[~valid] = AIR_VALUE
    logger.debug(
        "prepared %s volume: native size %s spacing %s -> model size %s (%.1f%% valid)",
        mod,
        image.GetSize(),
        image.GetSpacing(),
        grid.size,
        100.0 * valid.mean(),
    )
    return PreparedVolume(array=array, grid=grid, modality=mod, valid=valid)
