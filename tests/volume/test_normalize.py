"""Tests of uae_ray.volume.normalize: CT/MR scaling and prepare_volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.volume import (
    AIR_VALUE,
    Grid,
    VolumeError,
    model_grid,
    normalize_ct,
    normalize_intensities,
    normalize_mr,
    prepare_volume,
    read_image,
)
from uae_ray.volume.normalize import mr_intensity_range

from .helpers import make_image, random_ct, read_landmarks, require_data, rotation_direction


def test_normalize_ct_formula():
    hu = np.array([-3000, -1024, 0, 1023.5, 3071, 5000], dtype=np.int16)
    out = normalize_ct(hu)
    assert out.dtype == np.float32 and out.shape == hu.shape
    expected = (np.clip(hu.astype(np.float64), -1024, 3071) + 1024) / 2047.5 - 1
    assert np.allclose(out, expected, atol=1e-6)
    assert (
        out[0] == -1.0
        and out[1] == -1.0
        and out[4] == pytest.approx(1.0)
        and out[5] == pytest.approx(1.0)
    )
    # soft tissue keeps distinct values
    assert normalize_ct(np.array([40.0]))[0] > normalize_ct(np.array([20.0]))[0]


def test_normalize_ct_does_not_modify_input():
    hu = np.array([[-2000.0, 100.0]], dtype=np.float32)
    normalize_ct(hu)
    assert hu[0, 0] == -2000.0


def test_normalize_mr_background_and_percentiles():
    rng = np.random.default_rng(0)
    arr = np.zeros((20, 30, 30), np.float32)
    arr[5:15, 5:25, 5:25] = rng.uniform(100, 1100, size=(10, 20, 20))
    arr[10, 10, 10] = 1e6  # bright outlier: clipped, does not squash the range
    out = normalize_mr(arr)
    assert out.dtype == np.float32 and out.shape == arr.shape
    assert out.min() == -1.0 and out.max() == 1.0
    assert np.all(out[0] == -1.0)  # background -> air value
    body = out[5:15, 5:25, 5:25]
    assert -0.9 < np.median(body) < 0.1  # median of U(100, 1100) near the middle of [-1, 1]
    lo, hi = mr_intensity_range(arr)
    assert 100 <= lo < 110 and 1090 < hi <= 1100


def test_normalize_mr_with_mask():
    arr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = np.zeros(arr.shape, bool)
    mask[:5] = True  # values 0..499
    lo, hi = mr_intensity_range(arr, mask)
    assert lo == pytest.approx(np.percentile(np.arange(500), 0.2))
    assert hi == pytest.approx(np.percentile(np.arange(500), 99.8))
    out = normalize_mr(arr, mask)
    assert np.all(out[6:] == 1.0)
    with pytest.raises(ValueError):
        normalize_mr(arr, mask[:5])


def test_normalize_intensities_dispatch_and_bad_modality():
    arr = np.array([-1024.0, 3071.0])
    assert np.array_equal(normalize_intensities(arr, "ct"), normalize_ct(arr))
    with pytest.raises(VolumeError, match="unknown modality"):
        normalize_intensities(arr, "PET")


def test_prepare_volume_on_oblique_linear_ramp():
    """Linear interpolation reproduces a linear field exactly: checks the whole geometry chain."""
    spacing, origin, direction = (
        (1.7, 2.3, 3.1),
        (-20.0, 15.0, 40.0),
        rotation_direction(0.2, 0.4, -0.6),
    )
    shape = (14, 18, 22)
    grid = Grid(origin, spacing, direction, shape[::-1])
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = grid.index_to_world(np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1))
    coef = np.array([3.0, -2.0, 5.0])

    def field(pts):  # HU, well inside [-1024, 3071]
        return 500.0 + (pts - np.asarray(origin)) @ coef

    image = make_image(field(world).reshape(shape).astype(np.float32), spacing, origin, direction)
    pv = prepare_volume(image, "CT", spacing_mm=2.0, pad_multiple=16)
    assert pv.modality == "CT" and pv.grid == model_grid(image)
    assert pv.array.shape == pv.valid.shape == pv.grid.shape_zyx
    assert pv.array.dtype == np.float32 and pv.valid.dtype == bool
    assert np.all(pv.array[~pv.valid] == AIR_VALUE)
    # model voxels whose centres lie inside the voxel-centre extent of the image
    mz, my, mx = np.meshgrid(*[np.arange(n) for n in pv.grid.shape_zyx], indexing="ij")
    midx = np.stack([mx.ravel(), my.ravel(), mz.ravel()], axis=1)
    mworld = pv.grid.index_to_world(midx)
    src_idx = grid.world_to_index(mworld)
    interior = np.all((src_idx >= 1e-3) & (src_idx <= np.asarray(grid.size) - 1 - 1e-3), axis=1)
    assert interior.sum() > 1000
    got = pv.array.ravel()[interior]
    assert np.allclose(got, normalize_ct(field(mworld[interior])), atol=1e-4)
    # valid is exactly ITK's inside test (voxel faces), so it contains the interior
    assert np.all(pv.valid.ravel()[interior])
    assert np.array_equal(pv.valid.ravel(), grid.contains(mworld))


def test_prepare_volume_mr_and_modality_case():
    rng = np.random.default_rng(3)
    arr = np.zeros((10, 12, 14), np.int16)
    arr[2:8, 3:9, 3:11] = rng.integers(200, 900, size=(6, 6, 8))
    pv = prepare_volume(make_image(arr, spacing=(3, 3, 3)), "mr", spacing_mm=2.0, pad_multiple=8)
    assert pv.modality == "MR"
    assert all(s % 8 == 0 for s in pv.grid.size)
    assert pv.array.min() == -1.0 and pv.array.max() <= 1.0
    assert 0 < pv.valid.mean() < 1


def test_prepare_volume_rejects_unknown_modality_and_non_volumes():
    with pytest.raises(VolumeError, match="unknown modality"):
        prepare_volume(random_ct(), "US")
    with pytest.raises(VolumeError, match="2D image"):
        prepare_volume(sitk.Image([4, 5], sitk.sitkInt16), "CT")


# -- real data ---------------------------------------------------------------------------------


def _trilinear(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    return np.array(
        [image.EvaluateAtPhysicalPoint(tuple(map(float, p)), sitk.sitkLinear) for p in pts]
    )


def test_prepare_volume_keeps_landmark_neighbourhood_in_place_on_ras_ct():
    image = read_image(require_data("cases", "ts_example_ct", "image.nii.gz"))
    pv = prepare_volume(image, "CT")
    prepared = pv.grid.image_from_array(pv.array)
    lm = read_landmarks("ts_example_ct")
    names = [
        n
        for n in ("liver", "spleen", "vertebrae_L3", "aorta", "urinary_bladder", "femur_left")
        if n in lm
    ]
    pts = np.stack([lm[n] for n in names])
    assert pv.grid.contains(pts).all()
    # at the nearest model-voxel centre: the prepared value is the linear interpolation of the
    # normalised original at that world point (axis order and geometry are right)
    centres = pv.grid.index_to_world(np.round(pv.grid.world_to_index(pts)))
    idx = np.round(pv.grid.world_to_index(centres)).astype(int)
    at_centres = pv.array[idx[:, 2], idx[:, 1], idx[:, 0]]
    expected = normalize_ct(_trilinear(image, centres))
    assert np.allclose(at_centres, expected, atol=2e-3), dict(
        zip(names, at_centres - expected, strict=True)
    )
    # at the landmark itself, 3x3x3 mm neighbourhood means agree within interpolation tolerance
    offsets = np.stack(np.meshgrid(*[[-1.5, 0, 1.5]] * 3, indexing="ij"), -1).reshape(-1, 3)
    for name, p in zip(names, pts, strict=True):
        orig = normalize_ct(_trilinear(image, p + offsets)).mean()
        prep = _trilinear(prepared, p + offsets).mean()
        assert abs(orig - prep) < 0.03, f"{name}: {orig:.4f} vs {prep:.4f}"  # 0.03 ~ 60 HU


def test_prepare_volume_real_mr():
    image = read_image(require_data("cases", "ts_example_mr", "image.nii.gz"))
    pv = prepare_volume(image, "MR")
    assert pv.array.min() == -1.0 and pv.array.max() == pytest.approx(1.0, abs=1e-3)
    liver = read_landmarks("ts_example_mr")["liver"]
    i = np.round(pv.grid.world_to_index(liver)[0]).astype(int)
    assert pv.valid[i[2], i[1], i[0]]
    assert pv.array[i[2], i[1], i[0]] > -0.9  # tissue, not background
