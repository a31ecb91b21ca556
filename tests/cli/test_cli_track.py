"""`uae-ray track` end to end, in-process, on a real CT and a synthetic follow-up of it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.cli import build_parser, main
from uae_ray.tasks.markups import parse_markups
from uae_ray.tasks.points_io import read_tracks_csv
from tests.shared import SHARED_DATA, needs_shared_data

CASE = SHARED_DATA / "cases" / "sts_002_ct"


def test_track_verb_is_listed_and_bench_methods_match():
    from uae_ray.bench.tracking import TRACK_METHODS
    from uae_ray.cli import TRACKING_BENCH_METHODS

    assert "track" in build_parser().format_help()
    assert tuple(TRACKING_BENCH_METHODS) == tuple(TRACK_METHODS)


def test_track_needs_some_lesions(tmp_path):
    code = main(["track", "--baseline", "a.nii.gz", "--followup", "b.nii.gz", "--out", str(tmp_path / "t.csv")])
    assert code == 2 and not (tmp_path / "t.csv").exists()


@pytest.fixture(scope="module")
def followup(tmp_path_factory):
    from uae_ray.data.synthetic import synthetic_warp
    from uae_ray.volume import read_image, read_labels

    image = read_image(CASE / "image.nii.gz")
    warp = synthetic_warp(image, seed=5, max_fov_crop=0.0)
    path = tmp_path_factory.mktemp("followup") / "followup.nii.gz"
    sitk.WriteImage(warp.image, str(path))
    labels = sitk.GetArrayFromImage(read_labels(CASE / "labels.nii.gz"))
    zyx = np.argwhere(labels == 1).mean(axis=0)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))
    return path, warp, centre


@needs_shared_data
@pytest.mark.data
def test_track_writes_the_contract_and_the_report(tmp_path, followup, caplog):
    path, warp, centre = followup
    lesions = tmp_path / "lesions.csv"
    lesions.write_text(
        "name,x,y,z,radius_mm\n"
        f"gtv,{centre[0]},{centre[1]},{centre[2]},23\n"
        "nowhere,900,900,900,\n"
    )
    out, report = tmp_path / "tracks.csv", tmp_path / "qc.html"
    code = main([
        "track", "--baseline", str(CASE / "image.nii.gz"), "--followup", str(path), "--lesions", str(lesions),
        "--out", str(out), "--report", str(report),
    ])
    assert code == 1  # one lesion is outside the baseline: its row says so, the other is tracked
    assert any("nowhere" in r.getMessage() and "outside the baseline" in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header[:6] == ["name", "x", "y", "z", "score", "found"]
    tracks = read_tracks_csv(out)
    assert [t.name for t in tracks] == ["gtv", "nowhere"]
    truth = warp.to_warped(centre[None])[0]
    assert tracks[0].found and np.linalg.norm(tracks[0].xyz - truth) < 3.0, (tracks[0], truth)
    assert tracks[0].votes >= 4  # the radius made the lesion vote
    assert not tracks[1].found and tracks[1].error and np.isnan(tracks[1].x)
    names, xyz = parse_markups((tmp_path / "tracks.mrk.json").read_text(), "tracks.mrk.json")  # the tracked one
    assert names == ("gtv",) and np.allclose(xyz[0], tracks[0].xyz)
    html = report.read_text()
    assert html.count("data:image/png") == 6 * len(tracks) and "not tracked" in html and "gtv" in html


@needs_shared_data
@pytest.mark.data
def test_track_from_a_lesion_mask_named_by_meta_json(tmp_path, followup):
    path, warp, centre = followup
    out = tmp_path / "tracks.csv"
    code = main(["track", "--baseline", str(CASE / "image.nii.gz"), "--followup", str(path),
                 "--lesion-mask", str(CASE / "labels.nii.gz"), "--out", str(out), "--method", "nn"])
    assert code == 0
    (t,) = read_tracks_csv(out)
    assert t.name == "gtv" and t.radius_mm > 15.0  # named by the meta.json beside the mask
    np.testing.assert_allclose(t.baseline_xyz, centre, atol=0.01)
    assert np.linalg.norm(t.xyz - warp.to_warped(centre[None])[0]) < 4.0
    # the same name from the CSV and the mask is refused before anything runs
    lesions = tmp_path / "l.csv"
    lesions.write_text(f"name,x,y,z\ngtv,{centre[0]},{centre[1]},{centre[2]}\n")
    code = main(["track", "--baseline", str(CASE / "image.nii.gz"), "--followup", str(path), "--lesions",
                 str(lesions), "--lesion-mask", str(CASE / "labels.nii.gz"), "--out", str(tmp_path / "x.csv")])
    assert code == 2 and not (tmp_path / "x.csv").exists()
