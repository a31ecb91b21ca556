"""The demo's truth: centroids of whole structures only."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from uae_ray.samples import whole_centroids


def test_whole_centroids_skip_cut_and_empty_masks() -> None:
    arr = np.zeros((8, 8, 8), np.uint8)
    inside = arr.copy()
    inside[2:4, 3:5, 4:6] = 1
    cut = arr.copy()
    cut[0:3, 3:5, 3:5] = 1  # on the first slice
    images = {}
    for name, a in (("inside", inside), ("cut", cut), ("empty", arr)):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((2.0, 2.0, 3.0))
        img.SetOrigin((10.0, 20.0, 30.0))
        images[name] = img
    points, cut_names = whole_centroids(images)
    assert points.names == ("inside",) and cut_names == ("cut",)
    # voxel centre mean (x 4.5, y 3.5, z 2.5) -> world
    np.testing.assert_allclose(points.xyz[0], [10 + 2 * 4.5, 20 + 2 * 3.5, 30 + 3 * 2.5])


def test_demo_truth_text_reports_error_or_why_not() -> None:
    from pathlib import Path

    from uae_ray.demo import _truth_text
    from uae_ray.samples import SampleSet
    from uae_ray.tasks.points_io import NamedPoints

    samples = SampleSet(Path("."), Path("l.nii.gz"), NamedPoints((), np.zeros((0, 3))),
                        truth={"scan_a/": NamedPoints(("liver",), np.array([[0.0, 0.0, 0.0]]))},
                        cut={"scan_a/": ("spleen",)})
    assert _truth_text(samples, "scan_a", "liver", np.array([3.0, 4.0, 0.0])) == ("5.0 mm", 5.0)
    assert _truth_text(samples, "scan_a", "spleen", np.zeros(3))[0] == "cut by the field of view"
    assert _truth_text(samples, "scan_a", "kidney_left", np.zeros(3))[0] == "not labelled"
    assert _truth_text(samples, "other.nii.gz", "liver", np.zeros(3))[0] == "no labels"
