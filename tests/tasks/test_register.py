"""Landmark-based registration (core): known transforms on a real CT, the ITK convention of the
transform, partial overlap, too few correspondences; plus the robust fit on synthetic points."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.tasks.register import (
    Correspondences,
    Registrar,
    RegistrationConfig,
    RegistrationError,
    check_modality,
    fit_correspondences,
    fit_or_fall_back,
    grid_points,
    ransac_fit,
)
from uae_ray.tasks.transforms import make_transform, matrix_offset, transform_from_bytes, transform_to_bytes
from tests.shared import SHARED_DATA

CASE = SHARED_DATA / "cases" / "sts_002_ct" / "image.nii.gz"  # small pelvis CT: fast to embed and match


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


# --------------------------------------------------------------------------- no model needed


def test_ransac_fit_recovers_rigid_and_affine_despite_outliers():
    rng = np.random.default_rng(0)
    src = rng.uniform(-80, 80, size=(200, 3))
    rot = _rotation([1, 2, 3], 20.0)
    for kind, matrix in (("rigid", rot), ("affine", rot @ np.diag([1.08, 0.93, 1.02]))):
        offset = np.array([12.0, -30.0, 7.0])
        dst = src @ matrix.T + offset + rng.normal(0, 1.0, size=src.shape)
        bad = rng.random(len(src)) < 0.35
        dst[bad] = rng.uniform(-100, 100, size=(bad.sum(), 3))  # 35 % wrong matches
        a, t, inliers = ransac_fit(src, dst, kind, seed=1)
        probe = rng.uniform(-80, 80, size=(50, 3))
        err = np.linalg.norm(probe @ a.T + t - (probe @ matrix.T + offset), axis=1)
        assert err.max() < 1.5, (kind, err.max())  # 1 mm match noise
        assert inliers[~bad].mean() > 0.95 and inliers[bad].mean() < 0.05


def test_ransac_fit_is_deterministic():
    rng = np.random.default_rng(5)
    src = rng.uniform(-50, 50, size=(60, 3))
    dst = src + rng.normal(0, 3.0, size=src.shape)
    first = ransac_fit(src, dst, "affine", seed=3)
    second = ransac_fit(src, dst, "affine", seed=3)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)


def test_make_transform_roundtrip_and_file_bytes():
    matrix, offset = _rotation([0, 0, 1], 30.0), np.array([5.0, -2.0, 9.0])
    for kind in ("rigid", "affine"):
        tx = make_transform(matrix, offset, kind, center=np.array([10.0, 20.0, 30.0]))
        a, t = matrix_offset(tx)
        np.testing.assert_allclose(a, matrix, atol=1e-9)
        np.testing.assert_allclose(t, offset, atol=1e-9)
        back = transform_from_bytes(transform_to_bytes(tx))
        p = (3.0, -4.0, 5.0)
        np.testing.assert_allclose(back.TransformPoint(p), tx.TransformPoint(p), atol=1e-9)


def test_grid_points_keep_five_layers_on_a_slab():
    mask = np.ones((6, 60, 60), dtype=bool)  # 24 mm thick at 4 mm
    from uae_ray.volume import Grid

    grid = Grid((0.0, 0.0, 0.0), (4.0, 4.0, 4.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (60, 60, 6))
    pts = grid_points(mask, grid, max_points=250)
    assert 0 < len(pts) <= 250
    assert len(np.unique(pts[:, 2])) >= 5


def test_second_pass_points_are_a_central_copy_of_the_grid_box():
    from uae_ray.tasks.register.registrar import _central

    axes = [np.arange(0.0, 200.0, 10.0), np.arange(0.0, 100.0, 10.0), np.arange(0.0, 50.0, 10.0)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # a 200 x 100 x 50 mm grid
    idx = _central(pts, 120)
    assert len(idx) == 120 and np.all(np.diff(idx) > 0)
    kept = pts[idx]
    extent = kept.max(axis=0) - kept.min(axis=0)
    assert np.all(extent < [190.0, 90.0, 40.0]) and extent[0] > extent[1] > extent[2]  # the box's proportions
    np.testing.assert_allclose((kept.max(axis=0) + kept.min(axis=0)) / 2, [95.0, 45.0, 20.0], atol=5.0)
    assert len(_central(pts, None)) == len(pts) == len(_central(pts, 10**6))


def test_second_pass_crop_is_sized_for_the_network_and_keeps_every_point():
    from uae_ray.tasks.register.registrar import _resample_nan

    rng = np.random.default_rng(0)
    img = sitk.Image([100, 90, 40], sitk.sitkFloat32)
    img.SetSpacing((1.0, 1.1, 3.0))
    img.SetOrigin((-50.0, -40.0, -60.0))
    lo = np.array(img.GetOrigin())
    hi = np.array(img.TransformIndexToPhysicalPoint([99, 89, 39]))
    for _ in range(100):
        a, b = lo + rng.random(3) * (hi - lo), lo + rng.random(3) * (hi - lo)
        pts = np.stack([np.minimum(a, b), np.maximum(a, b)])
        out = _resample_nan(img, img, sitk.Transform(), 2.0, pts, rng.uniform(0.0, 40.0), 16)
        size, origin = np.array(out.GetSize()), np.array(out.GetOrigin())
        assert np.all(size % 16 == 0) and np.all(size > 0)
        assert np.all(pts[0] >= origin - 1e-6) and np.all(pts[1] <= origin + (size - 1) * 2.0 + 1e-6)


def test_too_few_inliers_is_one_line_naming_both_files():
    rng = np.random.default_rng(0)
    corr = Correspondences(40, rng.uniform(-50, 50, (40, 3)), rng.uniform(-50, 50, (40, 3)))  # all random
    with pytest.raises(RegistrationError) as err:
        fit_correspondences(corr, "rigid", RegistrationConfig(min_correspondences=20), "a.nii.gz -> b.nii.gz")
    assert "a.nii.gz -> b.nii.gz" in str(err.value) and "\n" not in str(err.value)


def test_an_affine_fit_of_a_flat_overlap_is_refused_but_rigid_works():
    rng = np.random.default_rng(1)
    src = np.c_[rng.uniform(-60, 60, (80, 2)), rng.normal(0, 0.5, 80)]  # a sheet: z nearly constant
    dst = src + np.array([4.0, -3.0, 2.0])
    corr = Correspondences(80, src, dst)
    a, t, inliers = fit_correspondences(corr, "rigid")
    np.testing.assert_allclose(src @ a.T + t, dst, atol=1e-6)
    assert inliers.all()
    with pytest.raises(RegistrationError, match="span 3D.*use a rigid transform"):
        fit_correspondences(corr, "affine")
    # what register/register_many do with it: a rigid fit, and a note saying so
    (a2, t2, _), fitted, note = fit_or_fall_back(corr, "affine")
    assert fitted == "rigid" and "thin slab" in note
    np.testing.assert_allclose(src @ a2.T + t2, dst, atol=1e-6)
    assert fit_or_fall_back(corr, "rigid")[1:] == ("rigid", "")


def test_check_modality_rejects_a_contradicting_flag():
    ct = sitk.GetImageFromArray(np.full((8, 8, 8), -1000, dtype=np.int16))
    ct[4, 4, 4] = 40
    assert check_modality(ct, "ct.nii.gz", "CT") == "CT"
    with pytest.raises(RegistrationError, match="ct.nii.gz: modality given as MR but the image is CT"):
        check_modality(ct, "ct.nii.gz", "MR")


# --------------------------------------------------------------------------- real CT, shipped model


@pytest.fixture(scope="module")
def fixed_ct():
    if not CASE.is_file():
        pytest.skip(f"{CASE} not found (../shared/data)")
    return sitk.ReadImage(str(CASE))


@pytest.fixture(scope="module")
def registrar(fixed_ct):
    import torch

    from uae_ray.serving import get_embedder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than 2 on a loaded 2-core machine
    yield Registrar(get_embedder(None), fixed_ct, "CT", fixed_name="fixed.nii.gz")
    torch.set_num_threads(threads)


def _moved(fixed, angle_deg, translation, crop_z=0.0):
    """The fixed CT resampled through a known S (moving -> fixed); returns (moving, S^-1)."""
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    rot = _rotation([0.3, -1.0, 0.5], angle_deg)
    s = make_transform(rot, centre - rot @ centre + np.asarray(translation), "affine", centre)
    ref = fixed
    if crop_z:
        size = list(fixed.GetSize())
        size[2] = int(size[2] * (1 - crop_z))
        ref = sitk.Image(size, fixed.GetPixelID())
        ref.CopyInformation(fixed) if size == list(fixed.GetSize()) else None
        ref.SetSpacing(fixed.GetSpacing())
        ref.SetDirection(fixed.GetDirection())
        ref.SetOrigin(fixed.GetOrigin())
    moving = sitk.Resample(fixed, ref, s, sitk.sitkLinear, -1024.0, fixed.GetPixelID())
    return moving, s.GetInverse()


def _tre(transform, truth, fixed, moving):
    from uae_ray.data.synthetic import body_points
    from uae_ray.volume import Grid

    pts = body_points(fixed, 200, np.random.default_rng(0), margin_frac=0.0)
    want = np.array([truth.TransformPoint(tuple(map(float, p))) for p in pts])
    keep = Grid.from_image(moving).contains(want, margin_vox=-1.0)
    got = np.array([transform.TransformPoint(tuple(map(float, p))) for p in pts[keep]])
    return np.linalg.norm(got - want[keep], axis=1)


@pytest.mark.data
def test_recovers_a_known_rigid_transform_and_follows_the_itk_convention(registrar, fixed_ct, tmp_path):
    moving, truth = _moved(fixed_ct, 18.0, (20.0, -15.0, 12.0))
    result = registrar.register(moving, "rigid", "CT", moving_name="moving.nii.gz")
    tre = _tre(result.transform, truth, fixed_ct, moving)
    assert np.median(tre) < 2.0 and tre.max() < 4.0, tre
    assert result.kind == "rigid" and isinstance(result.transform, sitk.Euler3DTransform)
    assert result.n_correspondences >= 30 and result.inlier_fraction > 0.8 and result.residual_mm < 3.0

    # .tfm round trip: fixed -> moving, so sitk.Resample(moving, fixed, T) overlays the fixed image.
    from uae_ray.tasks.transforms import write_transform_atomic

    path = write_transform_atomic(result.transform, tmp_path / "t.tfm")
    read = sitk.ReadTransform(str(path))
    p = tuple(float(v) for v in np.array(fixed_ct.TransformContinuousIndexToPhysicalPoint([40, 40, 20])))
    np.testing.assert_allclose(read.TransformPoint(p), truth.TransformPoint(p), atol=3.0)

    def overlap_corr(tx):
        res = sitk.GetArrayFromImage(sitk.Resample(moving, fixed_ct, tx, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
        ref = sitk.GetArrayFromImage(fixed_ct).astype(np.float32)
        ok = np.isfinite(res) & (ref > -500)
        return np.corrcoef(res[ok], ref[ok])[0, 1]

    # overlays about as well as the true transform (0.94; linear resampling twice, sub-mm TRE),
    # and the other direction does not overlay
    assert overlap_corr(read) > overlap_corr(truth) - 0.1
    assert overlap_corr(read.GetInverse()) < overlap_corr(read) - 0.2


@pytest.mark.data
def test_partial_overlap_affine(registrar, fixed_ct):
    moving, truth = _moved(fixed_ct, 6.0, (8.0, 5.0, -10.0), crop_z=0.45)
    result = registrar.register(moving, "affine", "CT", moving_name="cropped.nii.gz")
    tre = _tre(result.transform, truth, fixed_ct, moving)
    assert np.median(tre) < 2.5 and tre.max() < 6.0, tre
    assert 0.2 < result.overlap_fraction < 0.85, result.overlap_fraction
    # the truth is rigid: the extra affine parameters are not supported, so the fit is rigid, said
    # in the note, and the transform is still the AffineTransform that was asked for (its matrix a rotation)
    assert result.kind == "rigid" and "cross-validation" in result.note and "AffineTransform" in result.note
    assert type(result.transform) is sitk.AffineTransform
    m = np.asarray(result.transform.GetMatrix()).reshape(3, 3)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-6)
    forced = Registrar(registrar.embedder, fixed_ct, "CT", RegistrationConfig(select_affine=False),
                       fixed_name="fixed.nii.gz", fixed_maps=registrar.fixed_maps)
    affine = forced.register(moving, "affine", "CT", moving_name="cropped.nii.gz")
    assert affine.kind == "affine" and isinstance(affine.transform, sitk.AffineTransform) and not affine.note
    assert np.median(_tre(affine.transform, truth, fixed_ct, moving)) < 2.5


@pytest.mark.data
def test_too_few_correspondences_names_both_images(registrar, fixed_ct):
    moving, _ = _moved(fixed_ct, 0.0, (0.0, 0.0, 0.0))
    strict = Registrar(registrar.embedder, fixed_ct, "CT", RegistrationConfig(min_correspondences=100_000),
                       fixed_name="fixed.nii.gz", fixed_maps=registrar.fixed_maps)
    with pytest.raises(RegistrationError) as err:
        strict.register(moving, "rigid", "CT", moving_name="moving.nii.gz")
    msg = str(err.value)
    assert msg.startswith("fixed.nii.gz -> moving.nii.gz: too few correspondences") and "\n" not in msg

