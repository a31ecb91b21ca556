"""Volumes: reading, validation, geometry (world <-> voxel), resampling and normalisation.

Conventions: world points are LPS mm arrays (N, 3) in x, y, z order; :class:`Grid` indices are
continuous x, y, z indices; numpy volumes are (Z, Y, X).
"""

from uae_ray.volume.body import body_mask
from uae_ray.volume.errors import VolumeError
from uae_ray.volume.grid import Grid, model_grid, resample_to_grid
from uae_ray.volume.io import read_dicom_series, read_image, read_labels
from uae_ray.volume.labels import labels_on_border
from uae_ray.volume.modality import MODALITIES, Modality, detect_modality, parse_modality
from uae_ray.volume.normalize import (
    AIR_VALUE,
    PreparedVolume,
    mr_intensity_range,
    normalize_ct,
    normalize_intensities,
    normalize_mr,
    prepare_volume,
)
from uae_ray.volume.validate import validate_image

__all__ = [
    "labels_on_border",
    "body_mask",
    "AIR_VALUE",
    "Grid",
    "MODALITIES",
    "Modality",
    "PreparedVolume",
    "VolumeError",
    "detect_modality",
    "model_grid",
    "mr_intensity_range",
    "normalize_ct",
    "normalize_intensities",
    "normalize_mr",
    "parse_modality",
    "prepare_volume",
    "read_dicom_series",
    "read_image",
    "read_labels",
    "resample_to_grid",
    "validate_image",
]
