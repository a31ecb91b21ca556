"""Imaging modality: parsing an explicit flag and detecting CT vs MR from an image.

Detection order (:func:`detect_modality`):

1. an explicit flag ("CT" / "MR", case-insensitive) wins; anything else is an error;
2. the DICOM Modality tag ``0008|0060`` in the image's metadata (kept by
   :func:`uae_ray.volume.read_image` for DICOM series), if it says CT or MR;
3. a heuristic on intensities: CT is stored in Hounsfield units, so the air around and inside
   the body is about -1000 (and scanners pad outside the reconstruction circle with -1024 to
   -3024). The image is taken as CT when its minimum is <= -500 and at least 1 % of its voxels
   are below -500 (a few negative voxels from MR filtering are not enough); otherwise MR
   (MR magnitudes are >= 0, or only slightly negative after bias correction / filtering).

The decision and its reason are logged (INFO). An image taken as MR whose intensities look like a
CT stored without the -1024 rescale intercept (0..4095: air near 0 and a soft-tissue peak near
1024) gets a warning that names the file and ``--modality CT``; such a volume is ambiguous
(an MR's background is near 0 too), so it is not silently re-interpreted.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import SimpleITK as sitk

from uae_ray.volume.errors import VolumeError

logger = logging.getLogger(__name__)

Modality = Literal["CT", "MR"]
MODALITIES: tuple[str, ...] = ("CT", "MR")
DICOM_MODALITY_TAG = "0008|0060"
CT_AIR_HU = -500.0
CT_MIN_AIR_FRACTION = 0.01


def parse_modality(value: str, source: str) -> Modality:
    """Normalise a modality flag to "CT" or "MR".

    Args:
        value: "CT" or "MR", any case, surrounding blanks ignored.
        source: Where the flag applies (used in the error message).

    Raises:
        VolumeError: for any other value.
    """
    mod = str(value).strip().upper()
    if mod not in MODALITIES:
        raise VolumeError(source, f"unknown modality {value!r} (expected CT or MR)")
    return mod  # type: ignore[return-value]


def modality_from_intensities(array: np.ndarray) -> Modality:
    """Heuristic CT/MR decision from intensities (see module docstring).

    Args:
        array: Image intensities, any shape.

    Returns:
        "CT" if the minimum is <= -500 and >= 1 % of voxels are below -500, else "MR".
    """
    values = np.asarray(array)
    if values.size == 0:
        return "MR"
    below = values < CT_AIR_HU
    n_below = int(np.count_nonzero(below))
    if n_below and n_below >= CT_MIN_AIR_FRACTION * values.size:
        return "CT"
    return "MR"


def looks_like_unshifted_ct(array: np.ndarray) -> bool:
    """True when intensities look like CT stored as 0..4095 (no -1024 offset): no value below
    -50, at most 4096 + a margin, >= 10 % of voxels near 0 (air) and >= 5 % in 994..1124
    (fat to soft tissue, -30..100 HU shifted by +1024)."""
    values = np.asarray(array)
    if values.size == 0 or values.min() < -50 or values.max() > 4200:
        return False
    air = np.count_nonzero(values <= 50) / values.size
    tissue = np.count_nonzero((values >= 994) & (values <= 1124)) / values.size
    return bool(air >= 0.10 and tissue >= 0.05)


def detect_modality(image: sitk.Image, source: str, explicit: str | None = None) -> Modality:
    """Decide whether ``image`` is CT or MR.

    Args:
        image: The image (any pixel type; metadata as read by ``read_image``).
        source: File name for messages.
        explicit: Optional user flag ("CT"/"MR", case-insensitive); wins over everything.

    Returns:
        "CT" or "MR".

    Raises:
        VolumeError: if ``explicit`` is given but is neither CT nor MR.
    """
    if explicit is not None:
        mod = parse_modality(explicit, str(source))
        logger.debug("%s: modality %s (given)", source, mod)
        if mod == "CT" and looks_like_unshifted_ct(sitk.GetArrayViewFromImage(image)):
            logger.warning("%s: given as CT, but no voxel is below -50: the values look like 0..4095 without the "
                           "-1024 offset; intensities are read as HU, so fix the rescale intercept first", source)
        return mod
    if image.HasMetaDataKey(DICOM_MODALITY_TAG):
        tag = image.GetMetaData(DICOM_MODALITY_TAG).strip().upper()
        if tag in MODALITIES:
            logger.info("%s: modality %s (DICOM Modality tag)", source, tag)
            return tag  # type: ignore[return-value]
        logger.info("%s: DICOM modality %r is neither CT nor MR; using intensities", source, tag)
    values = sitk.GetArrayViewFromImage(image)
    mod = modality_from_intensities(values)
    if mod == "CT":
        logger.info("%s: modality CT from intensities (air below %g HU)", source, CT_AIR_HU)
    elif looks_like_unshifted_ct(values):
        logger.warning("%s: taken as MR (no voxel below %g), but the intensities look like a CT stored without "
                       "its -1024 offset (air near 0, soft tissue near 1024); if it is a CT, fix the rescale "
                       "intercept (HU = value - 1024) or pass --modality CT", source, CT_AIR_HU)
    else:
        logger.info("%s: modality MR from intensities (no air below %g HU)", source, CT_AIR_HU)
    return mod
