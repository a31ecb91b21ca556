"""`uae-ray localize` end to end (in-process) on real data: the boxes CSV contract, marked rows."""

import csv
import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from uae_ray.cli import EMBEDDING_MODES, LOCALIZE_DEFAULT_METHOD, LOCALIZE_METHODS, build_parser, main


def test_cli_constants_match_the_library():
    from uae_ray.tasks import localize

    assert tuple(LOCALIZE_METHODS) == localize.LOCALIZE_METHODS
    assert tuple(EMBEDDING_MODES) == localize.EMBEDDING_MODES
    assert LOCALIZE_DEFAULT_METHOD == localize.DEFAULT_LOCALIZE_METHOD
    assert "localize" in build_parser().format_help()


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "uae_ray.cli", "localize", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "IMAGE:LABELS" in out.stdout


def test_localize_end_to_end(shared_data, tmp_path, caplog):
    case = shared_data / "cases" / "ts_example_ct"
    # target: the CT moved by 12 mm along x in world space (a copy with another origin)
    image = sitk.ReadImage(str(case / "image.nii.gz"))
    image.SetOrigin(tuple(np.asarray(image.GetOrigin()) + [12.0, 0.0, 0.0]))
    target = tmp_path / "target.nii.gz"
    sitk.WriteImage(image, str(target))
    # a second support whose labels lack the organs (sidecar names): it is skipped for them
    other = shared_data / "cases" / "nsclc_lung1_001"
    labels = tmp_path / "cord.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(other / "labels.nii.gz")) == 2, str(labels))
    (tmp_path / "cord.json").write_text(json.dumps({"1": "spinal_cord"}))
    out = tmp_path / "boxes.csv"
    code = main([
        "localize", "--support", f"{case}/image.nii.gz:{case}/labels.nii.gz",
        "--support", f"{other}/image.nii.gz:{labels}",
        "--support", f"{tmp_path}/missing.nii.gz:{labels}",
        "--target", str(target), "--organs", "liver,kidney_left,brain", "--out", str(out),
        "--report", str(tmp_path / "qc.html"), "--truth", str(case / "boxes.csv"),
    ])
    assert code == 1  # one support could not be read; the boxes are still written
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"{tmp_path}/missing.nii.gz" in e and "\n" not in e for e in errors)
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0])[:7] == ["name", "xmin", "ymin", "zmin", "xmax", "ymax", "zmax"]
    assert [r["name"] for r in rows] == ["liver", "kidney_left", "brain"]
    truth = {r["name"]: r for r in csv.DictReader(open(case / "boxes.csv"))}
    for r in rows[:2]:
        assert r["status"] in ("ok", "partial_fov") and r["found"] == "true" and r["n_supports"] == "1"
        got = np.array([float(r[c]) for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")])
        want = np.array([float(truth[r["name"]][c]) for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")])
        want[[0, 3]] += 12.0
        assert np.abs(got - want).max() < 8.0, (r["name"], got - want)
    assert rows[2]["status"] == "no_support" and rows[2]["xmin"] == "nan" and "brain" in rows[2]["message"]
    html = (tmp_path / "qc.html").read_text()
    assert html.count("data:image/png") == 6 and "no_support" in html


def test_localize_unusable_inputs_exit_2(tmp_path):
    out = tmp_path / "boxes.csv"
    assert main(["localize", "--support", "nosep", "--target", "t.nii.gz", "--organs", "liver", "--out", str(out)]) == 2
    assert not out.exists()


def test_an_organ_typo_is_an_error_with_a_suggestion_before_any_embedding(shared_data, tmp_path, caplog):
    case = shared_data / "cases" / "ts_example_ct"
    out = tmp_path / "boxes.csv"
    code = main(["localize", "--support", f"{case}/image.nii.gz:{case}/labels.nii.gz",
                 "--target", f"{case}/image.nii.gz", "--organs", "livr,spleen", "--out", str(out)])
    assert code == 2 and not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "livr" in errors[0] and "did you mean 'liver'?" in errors[0]
    assert not any("embed" in r.getMessage().lower() for r in caplog.records)
