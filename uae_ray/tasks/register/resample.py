"""Modality checks and resampling of the moving image onto the fixed grid."""

from __future__ import annotations

import SimpleITK as sitk

from uae_ray.tasks.register.config import RegistrationError
from uae_ray.volume import detect_modality


def check_modality(image: sitk.Image, source: str, explicit: str | None = None) -> str:
    """The modality of ``image``: ``explicit`` when given and consistent with the image, else
    the detected one (:func:`~uae_ray.volume.detect_modality`).

    Raises:
        RegistrationError: ``explicit`` contradicts the image (its DICOM Modality tag, or its
            intensities: a CT flag on an image without Hounsfield-unit air, an MR flag on one
            with it): ``"<source>: ..."``, one line.
        VolumeError: ``explicit`` is neither CT nor MR.
    """
    detected = detect_modality(image, source)
    if explicit is None:
        return detected
    flag = detect_modality(image, source, explicit)
    if flag != detected:
        how = "its DICOM Modality tag" if image.HasMetaDataKey("0008|0060") else "its intensities"
        raise RegistrationError(f"{source}: modality given as {flag} but the image is {detected} by {how}")
    return flag


def resample_moving(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                    modality: str = "CT") -> sitk.Image:
    """The moving image resampled onto the fixed grid through ``transform`` (fixed -> moving);
    outside the moving field of view: air (-1024) for CT, 0 for MR. Pixel type of ``moving``."""
    default = -1024.0 if modality == "CT" else 0.0
    return sitk.Resample(moving, fixed, transform, sitk.sitkLinear, default, moving.GetPixelID())
