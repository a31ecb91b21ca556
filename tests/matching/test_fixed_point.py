"""Fixed-point matching: exact on synthetic maps, finds and abstains correctly on a real CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.matching import FixedPointConfig, embed_image, find_points
from uae_ray.volume import Grid, read_image

from tests.matching.test_nn import _maps, _voxel_points


def test_cube_and_config() -> None:
    cube = FixedPointConfig(radius_mm=8.0, points_per_axis=3).cube()
    assert cube.shape == (27, 3) and np.allclose(cube[0], 0.0) and np.abs(cube).max() == 8.0
    with pytest.raises(ValueError, match="odd"):
        FixedPointConfig(points_per_axis=2).cube()


def test_shifted_copy_exact_and_found() -> None:
    shift = np.array([7.3, -4.1, 2.0])
    a, b = _maps(), _maps(origin=tuple(shift))
    pts = _voxel_points(a, 12, seed=3)
    pts = pts[a.local_grid.contains(pts, margin_vox=4.0)]
    r = find_points(a, pts, b, "fixed-point", FixedPointConfig(radius_mm=8.0, chunk=64))
    np.testing.assert_allclose(r.points, pts + shift, atol=1e-4)
    assert r.found.all() and np.all(r.consistency > 0.5)
    nn = find_points(a, pts, b, "nn")
    assert nn.found.all() and np.isnan(nn.consistency).all()


def test_unknown_method() -> None:
    a = _maps()
    with pytest.raises(ValueError, match="unknown matching method 'nope'"):
        find_points(a, np.zeros((1, 3)), a, "nope")


@pytest.mark.data
@pytest.mark.slow
def test_real_ct_crop_abstains_outside_the_field_of_view(shared_data: Path) -> None:
    """Template: a real CT; target: the same CT without its upper 45 %. Points in the kept part
    are found (within a map voxel); points in the removed part are mostly abstained on."""
    from uae_ray.serving.local import LocalEmbedder

    image = read_image(shared_data / "cases" / "ts_example_ct" / "image.nii.gz")
    size = list(image.GetSize())
    keep = int(0.55 * size[2])
    target = sitk.RegionOfInterest(image, [size[0], size[1], keep], [0, 0, 0])
    embedder = LocalEmbedder()
    a = embed_image(image, embedder, "CT")
    b = embed_image(target, embedder, "CT")
    rng = np.random.default_rng(0)
    arr = sitk.GetArrayViewFromImage(image)
    zyx = np.argwhere(arr[:, ::4, ::4] > -300) * [1, 4, 4]
    pick = zyx[rng.choice(len(zyx), 300, replace=False)]
    pts = Grid.from_image(image).index_to_world(pick[:, ::-1].astype(float))
    kidx = Grid.from_image(target).world_to_index(pts)[:, 2]
    inside = (kidx > 6) & (kidx < keep - 6)  # clearly inside / outside, 6 slices from the cut
    outside = kidx > keep + 6
    pts_in = pts[inside][:25]
    pts_out = pts[outside][:25]
    r_in = find_points(a, pts_in, b, "fixed-point")
    r_out = find_points(a, pts_out, b, "fixed-point")
    err = np.linalg.norm(r_in.points - pts_in, axis=1)
    assert r_in.found.mean() >= 0.9, r_in.consistency
    assert np.median(err[r_in.found]) < 2.0 and err[r_in.found].max() < 6.0, err
    assert r_out.found.mean() <= 0.2, r_out.consistency
