"""The body (patient) mask of a prepared volume, on the grid of a strided map.

Used to store embeddings only where a query can land (:mod:`uae_ray.cohort.maps_io`): air
around the patient is a large part of a clinical CT's field of view.

Recipe (all on the normalised scale of :mod:`uae_ray.volume.normalize`, where air is -1):
voxels above :data:`BODY_THRESHOLD` (CT: -500 HU; MR: the darkest 5 % of the body's
intensity window) -> any-pooled onto the map grid (a map voxel is body when any input voxel
of its stride block is) -> holes filled per axial slice (lungs, bowel gas, sinuses, which
touch the outside air in 3D but not within a slice) -> dilated by ``margin`` map voxels
(a safety band for matches at the skin) -> restricted to the valid field of view.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from uae_ray.volume.modality import parse_modality
from uae_ray.volume.normalize import CT_HU_MAX, CT_HU_MIN

_CT_BODY_HU = -500.0
#: Normalised intensity above which a voxel is body, per modality.
BODY_THRESHOLD = {
    "CT": 2.0 * (_CT_BODY_HU - CT_HU_MIN) / (CT_HU_MAX - CT_HU_MIN) - 1.0,  # -0.744
    "MR": -0.9,
}
#: Map voxels of dilation around the body (2 on the 4 mm local grid: 8 mm).
BODY_MARGIN = 2


def _any_pool(mask: np.ndarray, stride: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """(Z, Y, X) bool -> (shape) bool: True where any voxel of the stride block is."""
    sz, sy, sx = stride
    nz, ny, nx = shape
    padded = np.zeros((nz * sz, ny * sy, nx * sx), dtype=bool)
    cz, cy, cx = (min(a, b) for a, b in zip(mask.shape, padded.shape))
    padded[:cz, :cy, :cx] = mask[:cz, :cy, :cx]
    return padded.reshape(nz, sz, ny, sy, nx, sx).any(axis=(1, 3, 5))


def body_mask(
    array: np.ndarray,
    modality: str,
    stride: tuple[int, int, int],
    shape: tuple[int, int, int],
    valid: np.ndarray | None = None,
    margin: int = BODY_MARGIN,
) -> np.ndarray:
    """The body mask on a map grid.

    Args:
        array: (Z, Y, X) normalised volume on the model grid (air = -1).
        modality: "CT" or "MR".
        stride: (z, y, x) stride of the map grid relative to the model grid.
        shape: (z, y, x) shape of the map.
        valid: Optional (z, y, x) bool field-of-view mask on the map grid (the result is
            restricted to it).
        margin: Dilation radius in map voxels.

    Returns:
        (z, y, x) bool mask of the map voxels that are body (or within ``margin`` of it).
    """
    mod = parse_modality(modality, "body_mask")
    pooled = _any_pool(np.asarray(array) > BODY_THRESHOLD[mod], stride, shape).astype(np.uint8)
    filled = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(sl)))
                       for sl in pooled]) if len(pooled) else pooled
    image = sitk.GetImageFromArray(np.ascontiguousarray(filled, dtype=np.uint8))
    if margin > 0:
        image = sitk.BinaryDilate(image, [int(margin)] * 3, sitk.sitkBall)
    out = sitk.GetArrayFromImage(image).astype(bool)
    return out & np.asarray(valid, dtype=bool) if valid is not None else out
