"""Tests of uae_ray.volume.grid: Grid mapping, contains, model_grid, resample_to_grid."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.volume import Grid, model_grid, read_image, resample_to_grid

from .helpers import (
    make_image,
    manifest,
    random_ct,
    read_landmarks,
    require_data,
    rotation_direction,
)

OBLIQUE = dict(
    spacing=(0.7, 1.3, 2.9), origin=(-12.5, 30.25, 101.0), direction=rotation_direction()
)


def _sitk_index_to_world(image: sitk.Image, idx: np.ndarray) -> np.ndarray:
    return np.array(
        [image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in idx]
    )


@pytest.fixture
def oblique_image() -> sitk.Image:
    return random_ct((9, 11, 13), **OBLIQUE)


def test_from_image_copies_geometry(oblique_image):
    g = Grid.from_image(oblique_image)
    assert g.size == (13, 11, 9)
    assert g.shape_zyx == (9, 11, 13)
    assert np.allclose(g.spacing, OBLIQUE["spacing"])
    assert np.allclose(g.origin, OBLIQUE["origin"])
    assert np.allclose(g.direction, OBLIQUE["direction"])
    assert all(isinstance(v, float) for v in g.origin) and all(isinstance(v, int) for v in g.size)


def test_index_to_world_matches_sitk_and_round_trips_on_oblique(oblique_image):
    g = Grid.from_image(oblique_image)
    rng = np.random.default_rng(1)
    idx = rng.uniform(-3, 15, size=(200, 3))
    world = g.index_to_world(idx)
    assert world.shape == (200, 3)
    assert np.allclose(world, _sitk_index_to_world(oblique_image, idx), atol=1e-6)
    assert np.max(np.abs(g.world_to_index(world) - idx)) < 1e-6
    pts = rng.uniform(-100, 100, size=(200, 3))
    assert np.max(np.abs(g.index_to_world(g.world_to_index(pts)) - pts)) < 1e-6


def test_single_point_and_bad_shapes(oblique_image):
    g = Grid.from_image(oblique_image)
    assert g.index_to_world(np.zeros(3)).shape == (1, 3)
    assert np.allclose(g.index_to_world([0, 0, 0])[0], OBLIQUE["origin"])
    with pytest.raises(ValueError):
        g.world_to_index(np.zeros((4, 2)))


def test_grid_checks_its_fields():
    with pytest.raises(ValueError):
        Grid(origin=(0, 0, 0), spacing=(1, 1, 1), direction=(1, 0, 0), size=(2, 2, 2))
    with pytest.raises(ValueError):
        Grid(
            origin=(0, 0, 0),
            spacing=(1, 0, 1),
            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
            size=(2, 2, 2),
        )


def test_grid_is_frozen_hashable_and_picklable(oblique_image):
    g = Grid.from_image(oblique_image)
    g.world_to_index(np.zeros((1, 3)))  # fills the cached matrices
    with pytest.raises(AttributeError):
        g.size = (1, 1, 1)  # type: ignore[misc]
    g2 = pickle.loads(pickle.dumps(g))
    assert g2 == g and hash(g2) == hash(g)


def test_contains_uses_voxel_faces_and_margin():
    g = Grid(
        origin=(0, 0, 0),
        spacing=(2, 2, 2),
        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
        size=(10, 10, 10),
    )
    pts = np.array(
        [[0, 0, 0], [-0.9, 5, 5], [-1.1, 5, 5], [18.9, 5, 5], [19.1, 5, 5], [10, 10, 10]]
    )
    assert g.contains(pts).tolist() == [True, True, False, True, False, True]
    assert g.contains(pts, margin_vox=0.5).tolist() == [True] * 6
    assert g.contains(pts, margin_vox=-1.0).tolist() == [False, False, False, False, False, True]


def test_reference_image_and_image_from_array(oblique_image):
    g = Grid.from_image(oblique_image)
    ref = g.reference_image(sitk.sitkFloat32)
    assert Grid.from_image(ref) == g and ref.GetPixelID() == sitk.sitkFloat32
    arr = np.arange(np.prod(g.shape_zyx), dtype=np.float32).reshape(g.shape_zyx)
    img = g.image_from_array(arr)
    assert Grid.from_image(img) == g
    # numpy (z, y, x) <-> sitk index (x, y, z)
    assert img.GetPixel(3, 2, 1) == arr[1, 2, 3]
    with pytest.raises(ValueError):
        g.image_from_array(arr.T)


def _assert_model_grid_covers(image_grid: Grid, mg: Grid, spacing: float, pad: int) -> None:
    assert mg.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert mg.spacing == (spacing,) * 3
    assert all(s % pad == 0 for s in mg.size)
    corners = image_grid.corners_world()
    idx = mg.world_to_index(corners)
    assert np.all(idx >= -1e-6) and np.all(idx <= np.asarray(mg.size) - 1 + 1e-6)
    # tight: the low corner is the origin, and without padding one voxel fewer would not cover
    assert np.allclose(idx.min(axis=0), 0.0, atol=1e-6)
    unpadded = model_grid(image_grid, spacing_mm=spacing, pad_multiple=1)
    assert np.all(idx.max(axis=0) > np.asarray(unpadded.size) - 2)
    assert all(s >= u for s, u in zip(mg.size, unpadded.size, strict=True))
    assert all(s - u < pad for s, u in zip(mg.size, unpadded.size, strict=True))


def test_model_grid_covers_oblique_image(oblique_image):
    mg = model_grid(oblique_image, spacing_mm=2.0, pad_multiple=16)
    _assert_model_grid_covers(Grid.from_image(oblique_image), mg, 2.0, 16)
    mg8 = model_grid(Grid.from_image(oblique_image), spacing_mm=1.5, pad_multiple=8)
    _assert_model_grid_covers(Grid.from_image(oblique_image), mg8, 1.5, 8)


def test_model_grid_exact_extent_not_rounded_up():
    # voxel-centre extent 2 * 15 = 30 mm -> exactly 16 voxel centres at 2 mm
    img = make_image(np.zeros((16, 16, 16), np.int16), spacing=(2, 2, 2))
    assert model_grid(img, 2.0, pad_multiple=1).size == (16, 16, 16)
    assert model_grid(img, 2.0, pad_multiple=16).size == (16, 16, 16)


def test_model_grid_rejects_bad_arguments(oblique_image):
    with pytest.raises(ValueError):
        model_grid(oblique_image, spacing_mm=0.0)
    with pytest.raises(ValueError):
        model_grid(oblique_image, pad_multiple=0)


def test_resample_to_grid_pixel_types_and_identity(oblique_image):
    g = Grid.from_image(oblique_image)
    same = resample_to_grid(oblique_image, g)
    assert same.GetPixelID() == sitk.sitkFloat32
    # same grid: voxel centres map onto voxel centres (up to rounding of the oblique matrix)
    assert np.allclose(
        sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(oblique_image), atol=1e-2
    )
    nn = resample_to_grid(
        oblique_image, model_grid(oblique_image), sitk.sitkNearestNeighbor, default_value=-1024
    )
    assert nn.GetPixelID() == sitk.sitkInt16
    assert Grid.from_image(nn) == model_grid(oblique_image)
    assert sitk.GetArrayViewFromImage(nn).min() == -1024  # padding filled with the default


# -- real data ---------------------------------------------------------------------------------


def test_round_trip_on_ras_stored_ts_example_ct():
    image = read_image(require_data("cases", "ts_example_ct", "image.nii.gz"))
    g = Grid.from_image(image)
    assert np.allclose(g.direction_matrix, np.diag([-1.0, -1.0, 1.0]))
    rng = np.random.default_rng(2)
    idx = rng.uniform(0, 100, size=(100, 3))
    world = g.index_to_world(idx)
    assert np.allclose(world, _sitk_index_to_world(image, idx), atol=1e-6)
    assert np.max(np.abs(g.world_to_index(world) - idx)) < 1e-6
    lm = np.stack(list(read_landmarks("ts_example_ct").values()))
    assert np.max(np.abs(g.index_to_world(g.world_to_index(lm)) - lm)) < 1e-6
    _assert_model_grid_covers(g, model_grid(image), 2.0, 16)


def _header_grid(path) -> Grid:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Grid(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), reader.GetSize())


def test_landmarks_of_real_cases_map_inside_their_image():
    cases = [row["case_id"] for row in manifest() if row["has_landmarks"] == "1"]
    assert cases
    for case in cases:
        g = _header_grid(require_data("cases", case, "image.nii.gz"))
        names, pts = zip(*read_landmarks(case).items(), strict=True)
        inside = g.contains(np.stack(pts))
        assert inside.all(), (
            f"{case}: outside {[n for n, i in zip(names, inside, strict=True) if not i]}"
        )
