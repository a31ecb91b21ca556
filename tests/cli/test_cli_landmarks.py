"""`uae-ray landmarks` end to end, in-process, on real data."""

import subprocess
import sys

import json

import numpy as np
import pytest

from uae_ray.cli import build_parser, main
from uae_ray.tasks.markups import parse_markups
from uae_ray.tasks.points_io import read_detections_csv, read_points_csv
from tests.shared import SHARED_DATA, needs_shared_data



def test_help_lists_the_verbs():
    text = build_parser().format_help()
    for verb in ("landmarks", "stack", "cohort", "bench", "demo"):
        assert verb in text


def test_cli_method_choices_match_the_library():
    from uae_ray.cli import MATCHING_METHODS
    from uae_ray.matching import METHODS

    assert tuple(MATCHING_METHODS) == tuple(METHODS)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "uae_ray.cli", "landmarks", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--template" in out.stdout


@needs_shared_data
def test_landmarks_identity_and_a_bad_target(tmp_path, caplog):
    case = SHARED_DATA / "cases" / "ts_example_ct"
    points = tmp_path / "points.csv"
    lines = (case / "landmarks.csv").read_text().splitlines()
    points.write_text("\n".join(lines[:6]) + "\n")  # header + 5 organ centroids
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes((case / "image.nii.gz").read_bytes()[:5000])
    out = tmp_path / "det.csv"
    code = main([
        "landmarks", "--template", str(case / "image.nii.gz"), "--points", str(points),
        "--target", str(broken), "--target", str(case / "image.nii.gz"), "--out", str(out),
        "--report", str(tmp_path / "qc.html"),
    ])
    assert code == 1  # one target failed, the other was processed
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(broken) in e and "\n" not in e for e in errors)
    dets = read_detections_csv(out)
    truth = read_points_csv(points)
    assert [d.name for d in dets] == list(truth.names)
    assert all(d.target == str(case / "image.nii.gz") for d in dets)
    err = np.linalg.norm(np.array([[d.x, d.y, d.z] for d in dets]) - truth.xyz, axis=1)
    assert err.max() < 4.0, err  # same scan: within one 4 mm map voxel
    assert all(d.found for d in dets)
    assert (tmp_path / "qc.html").read_text().count("data:image/png") == 3 * len(truth) + 3 * len(dets)
    names, xyz = parse_markups((tmp_path / "det.mrk.json").read_text(), "det.mrk.json")  # beside the CSV, LPS
    assert names == truth.names
    np.testing.assert_allclose(xyz, [[d.x, d.y, d.z] for d in dets], atol=1e-6)


@needs_shared_data
def test_landmarks_bad_points_file_exits_2(tmp_path):
    case = SHARED_DATA / "cases" / "ts_example_ct"
    bad = tmp_path / "p.csv"
    bad.write_text("name,x,y\n")
    code = main(["landmarks", "--template", str(case / "image.nii.gz"), "--points", str(bad),
                 "--target", str(case / "image.nii.gz"), "--out", str(tmp_path / "d.csv")])
    assert code == 2 and not (tmp_path / "d.csv").exists()


@needs_shared_data
@pytest.mark.parametrize("kind", ["ras", "far"])
def test_landmarks_points_outside_the_template_exit_2(tmp_path, caplog, kind):
    """RAS points handed over as LPS (x, y negated), or a point 9 m away: an error, not a 'found'."""
    case = SHARED_DATA / "cases" / "ts_example_ct"
    rows = (case / "landmarks.csv").read_text().splitlines()[1:4]
    pts = [r.split(",") for r in rows]
    if kind == "ras":
        body = [f"{n},{-float(x)},{-float(y)},{z}" for n, x, y, z in pts]
    else:
        body = [",".join(pts[0]), f"{pts[1][0]},{pts[1][1]},{pts[1][2]},9392"]
    points = tmp_path / "p.csv"
    points.write_text("name,x,y,z\n" + "\n".join(body) + "\n")
    out = tmp_path / "d.csv"
    code = main(["landmarks", "--template", str(case / "image.nii.gz"), "--points", str(points),
                 "--target", str(case / "image.nii.gz"), "--out", str(out)])
    assert code == 2 and not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and str(points) in errors[0]
    assert "outside the template image" in errors[0]
    assert (pts[1][0] in errors[0]) if kind == "far" else all(p[0] in errors[0] for p in pts)
    assert ("looks like RAS" in errors[0]) == (kind == "ras")  # the hint only where negating x, y fits


@needs_shared_data
def test_landmarks_reads_slicer_markups_in_ras(tmp_path):
    """A Slicer point list saved in RAS gives the same detections as the LPS CSV."""
    case = SHARED_DATA / "cases" / "ts_example_ct"
    truth = read_points_csv(case / "landmarks.csv")
    cps = [{"label": n, "position": [-x, -y, z]} for n, (x, y, z) in zip(truth.names[:2], truth.xyz[:2])]
    mrk = tmp_path / "points.mrk.json"
    mrk.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": cps}]}))
    out = tmp_path / "d.csv"
    code = main(["landmarks", "--template", str(case / "image.nii.gz"), "--points", str(mrk),
                 "--target", str(case / "image.nii.gz"), "--out", str(out), "--method", "nn"])
    assert code == 0
    dets = read_detections_csv(out)
    err = np.linalg.norm(np.array([[d.x, d.y, d.z] for d in dets]) - truth.xyz[:2], axis=1)
    assert [d.name for d in dets] == list(truth.names[:2]) and err.max() < 4.0
