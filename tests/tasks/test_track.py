"""Lesion tracking on a real CT (../shared/data) under known synthetic warps, plus the voting rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.matching import MatchResult
from uae_ray.tasks.points_io import LesionPoints
from uae_ray.tasks.label_names import parse_label_names
from uae_ray.tasks.track import (
    LesionTracker,
    TrackConfig,
    lesions_from_mask,
    vote,
    vote_offsets,
)
from uae_ray.volume import Grid

CASE = "sts_002_ct"  # a small real pelvis CT with a manual GTV contour (161x143x48 voxels)


def test_vote_offsets_follow_the_radius_and_config():
    les = LesionPoints(("a", "b", "c"), np.zeros((3, 3)), np.array([20.0, np.nan, 3.0]))
    offs = vote_offsets(les, 0, TrackConfig())
    assert offs.shape == (7, 3) and np.allclose(offs[0], 0)
    np.testing.assert_allclose(np.linalg.norm(offs[1:], axis=1), 10.0)  # half the radius
    assert vote_offsets(les, 1, TrackConfig()).shape == (1, 3)  # no radius: the centre alone
    assert vote_offsets(les, 2, TrackConfig()).shape == (1, 3)  # 1.5 mm < min_offset_mm
    assert vote_offsets(les, 0, TrackConfig(extent=False)).shape == (1, 3)
    big = LesionPoints(("m",), np.zeros((1, 3)), np.array([100.0]))
    np.testing.assert_allclose(np.linalg.norm(vote_offsets(big, 0, TrackConfig())[1:], axis=1), 20.0)  # capped


def test_vote_absorbs_growth_and_drops_an_outlier():
    centre = np.array([10.0, -5.0, 30.0])
    offs = np.concatenate([np.zeros((1, 3)), np.eye(3) * 8, -np.eye(3) * 8])
    moved = centre + np.array([3.0, 4.0, -2.0]) + 1.3 * offs  # translation + the lesion grew by 30 %
    moved[2] += np.array([40.0, 0.0, 0.0])  # one wrong match
    res = MatchResult(moved, np.full(7, 0.8), np.ones(7, bool), np.ones(7))
    v = vote(centre, offs, res, TrackConfig())
    np.testing.assert_allclose(v["xyz"], centre + [3.0, 4.0, -2.0], atol=0.5)
    assert v["votes"] == 6 and not v["agree"][2]
    # votes that the matcher did not find do not count
    found = np.array([True, False, False, False, False, True, True])
    v = vote(centre, offs, MatchResult(moved, np.full(7, 0.8), found, np.ones(7)), TrackConfig())
    assert v["votes"] == 3 and v["consistency"] < TrackConfig().min_vote_fraction


def test_label_names_from_json():
    assert parse_label_names('{"1": "gtv", "3": "node"}', "x.json") == {1: "gtv", 3: "node"}
    assert parse_label_names('{"labels": {"2": "met"}, "patient": "p1"}', "meta.json") == {2: "met"}
    with pytest.raises(ValueError, match="x.json: not valid JSON"):
        parse_label_names("{", "x.json")


def test_lesions_from_mask_centroid_and_radius():
    arr = np.zeros((30, 40, 50), np.uint8)  # z, y, x
    zz, yy, xx = np.mgrid[:30, :40, :50]
    arr[(xx - 20) ** 2 + (yy - 20) ** 2 + ((zz - 15) * 2) ** 2 <= 64] = 2  # a ball of radius 8 mm
    mask = sitk.GetImageFromArray(arr)
    mask.SetSpacing((1.0, 1.0, 2.0))
    mask.SetOrigin((-10.0, 5.0, 100.0))
    les = lesions_from_mask(mask, {2: "met"})
    assert les.names == ("met",)
    np.testing.assert_allclose(les.xyz[0], [10.0, 25.0, 130.0], atol=1e-6)
    assert les.radius_mm[0] == pytest.approx(8.0, rel=0.1) and les.extent_of(0).shape[1] == 3
    with pytest.raises(ValueError, match="no non-zero label"):
        lesions_from_mask(sitk.Image(4, 4, 4, sitk.sitkUInt8), source="empty.nii.gz")


@pytest.fixture(scope="module")
def real_case(shared_data: Path):
    from uae_ray.serving.local import LocalEmbedder
    from uae_ray.volume import read_image, read_labels

    folder = shared_data / "cases" / CASE
    if not (folder / "image.nii.gz").is_file():
        pytest.skip(f"{folder} not found")
    image = read_image(folder / "image.nii.gz")
    gtv = lesions_from_mask(read_labels(folder / "labels.nii.gz"), {1: "gtv"})
    embedder = LocalEmbedder()
    tracker = LesionTracker(embedder, image, gtv, "CT")
    return image, gtv, embedder, tracker


@pytest.mark.data
def test_tracks_the_real_gtv_under_a_known_warp(real_case):
    from uae_ray.data.synthetic import synthetic_warp

    image, gtv, _, tracker = real_case
    warp = synthetic_warp(image, seed=2, max_fov_crop=0.0)
    truth = warp.to_warped(gtv.xyz)
    assert np.linalg.norm(truth - gtv.xyz) > 15.0  # the warp moves the tumour far
    tracks = tracker.track(warp.image, "CT")
    assert len(tracks) == 1 and tracks[0].name == "gtv" and tracks[0].error is None
    t = tracks[0]
    assert t.found and t.score > 0.7 and t.votes >= 4
    assert np.linalg.norm(t.xyz - truth[0]) < 3.0, (t, truth)  # measured 0.8 mm
    np.testing.assert_allclose(t.baseline_xyz, gtv.xyz[0])


@pytest.mark.data
def test_lesion_outside_the_followup_abstains_and_outside_the_baseline_errors(real_case):
    image, _, embedder, _ = real_case
    size = image.GetSize()
    followup = sitk.RegionOfInterest(image, [size[0], size[1], size[2] // 2], [0, 0, size[2] // 2])  # upper half
    grid = Grid.from_image(image)
    low = grid.index_to_world(np.array([[80.0, 70.0, 5.0], [60.0, 80.0, 10.0]]))
    far = np.array([[1000.0, 1000.0, 1000.0]])
    lesions = LesionPoints(("low_a", "low_b", "nowhere"), np.concatenate([low, far]), np.array([10.0, np.nan, 5.0]))
    tracker = LesionTracker(embedder, image, lesions, "CT")
    tracks = tracker.track(followup, "CT")
    assert [t.name for t in tracks] == ["low_a", "low_b", "nowhere"]
    assert not tracks[0].found and not tracks[1].found  # truth cropped out of the follow-up: abstain
    assert all(np.isfinite(t.score) and t.error is None for t in tracks[:2])
    assert not tracks[2].found and np.isnan(tracks[2].x) and "outside the baseline image" in tracks[2].error
