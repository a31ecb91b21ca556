"""Tests of uae_ray.volume.validate on in-memory images (file-based cases are in test_io)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.volume import VolumeError, validate_image
from uae_ray.volume.validate import check_geometry, check_intensities, check_shape

from .helpers import make_image, random_ct, rotation_direction


def _error(image: sitk.Image, check=validate_image) -> str:
    with pytest.raises(VolumeError) as excinfo:
        check(image, "mem://img")
    msg = str(excinfo.value)
    assert msg.startswith("mem://img: ") and "\n" not in msg
    return msg


def test_valid_images_pass():
    assert validate_image(random_ct(), "a") is None
    assert validate_image(random_ct(spacing=(0.06, 50.0, 3.0), direction=rotation_direction()), "b") is None
    # left-handed (RAS-stored NIfTI) directions are orthonormal too
    assert validate_image(random_ct(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)), "c") is None
    assert validate_image(random_ct(direction=(1, 0, 0, 0, 1, 0, 0, 0, -1)), "d") is None


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (sitk.Image([0, 0, 0], sitk.sitkInt16), "empty image (size 0x0x0)"),
        (sitk.Image([5, 0, 4], sitk.sitkInt16), "empty image"),
        (sitk.Image([5, 6], sitk.sitkInt16), "2D image (size 5x6)"),
        (sitk.Image([5, 6, 1], sitk.sitkInt16), "2D image (size 5x6x1)"),
        (sitk.Image([2, 3, 4, 5], sitk.sitkInt16), "4D image (size 2x3x4x5)"),
        (sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), "multi-component image (3 components"),
    ],
)
def test_shape_errors(image, fragment):
    assert fragment in _error(image, check_shape)


@pytest.mark.parametrize(
    "spacing",
    [(0.05, 1.0, 1.0), (1.0, 50.01, 1.0), (float("nan"), 1.0, 1.0), (1.0, 1.0, float("inf"))],
)
def test_absurd_spacing(spacing):
    image = random_ct()
    image.SetSpacing(spacing)
    assert "absurd voxel spacing" in _error(image, check_geometry)


def test_non_finite_origin_and_non_orthonormal_direction():
    image = random_ct()
    image.SetOrigin((0.0, float("inf"), 0.0))
    assert "non-finite origin" in _error(image, check_geometry)
    skew = random_ct(direction=(1, 0.1, 0, 0, 1, 0, 0, 0, 1))
    assert "not orthonormal" in _error(skew, check_geometry)
    scaled = random_ct(direction=(1.01, 0, 0, 0, 1, 0, 0, 0, 1))
    assert "not orthonormal" in _error(scaled)


def test_constant_and_non_finite_intensities():
    assert "constant image (every voxel is 7)" in _error(
        make_image(np.full((3, 4, 5), 7, np.int16))
    )
    arr = np.random.rand(3, 4, 5).astype(np.float32)
    arr[1, 2, 3] = np.nan
    assert "non-finite" in _error(make_image(arr), check_intensities)
