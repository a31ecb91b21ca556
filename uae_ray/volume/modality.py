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
        return parse_modality(explicit, str(source))
    if image.HasMetaDataKey(DICOM_MODALITY_TAG):
        tag = image.GetMetaData(DICOM_MODALITY_TAG).strip().upper()
        if tag in MODALITIES:
            return tag  # type: ignore[return-value]
        logger.info("%s: DICOM modality %r is neither CT nor MR; using intensities", source, tag)
    mod = modality_from_intensities(sitk.GetArrayViewFromImage(image))
    logger.debug("%s: modality %s from intensities", source, mod)
    return mod
