"""`cohort prelabel` on real CTs: a local archive of two downsampled scans and a truncated file,
run with a real local Ray instance and in-process models (label maps on the scans' grids, the
Parquet index with hashed ids and marked rows, the manifest, re-run skips, the QC report), the
same over the real local stack (S3 + Triton + Ray head), and argument errors of the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

from uae_ray.cli import main
from uae_ray.cohort.prelabel import (
    PRELABEL_MANIFEST,
    PrelabelError,
    index_uri,
    labels_uri,
    qc_uri,
    row_status,
    run_cohort_prelabel,
)
from uae_ray.storage import Manifest, discover_scans, join
from uae_ray.storage.schemas import PRELABEL, PRELABEL_STATUSES

SUPPORT = "ts_example_ct"  # liver = 5, spleen = 1 (names from its meta.json)
ORGANS = "liver,spleen,brain"  # no support has a brain
# statuses of a row with a mask: whether it is "ok" is the calibrated quality's call
MASKED = ("ok", "low_confidence")


def _shrink(image: sitk.Image, factor: int, labels: bool = False) -> sitk.Image:
    """In-plane downsampling by ``factor`` (same z slices): small inputs for a fast test."""
    spacing = [s * factor for s in image.GetSpacing()[:2]] + [image.GetSpacing()[2]]
    size = [int(round(n / factor)) for n in image.GetSize()[:2]] + [image.GetSize()[2]]
    interp, default = (sitk.sitkNearestNeighbor, 0) if labels else (sitk.sitkLinear, -1024)
    return sitk.Resample(image, size, sitk.Transform(), interp, image.GetOrigin(), spacing, image.GetDirection(),
                         default, image.GetPixelID())


def _build_inputs(shared_data: Path, root: Path) -> dict:
    """The archive (two real CTs and a truncated file), the truth of the abdomen CT, and two
    supports: the full labels and a liver-only copy (its labels lack the spleen)."""
    cases = shared_data / "cases"
    archive = root / "archive"
    (archive / "pt1").mkdir(parents=True)
    (archive / "pt2").mkdir()
    (archive / "bad").mkdir()
    abdomen = _shrink(sitk.ReadImage(str(cases / "ts_upper_abdomen" / "image.nii.gz")), 4)
    truth = _shrink(sitk.ReadImage(str(cases / "ts_upper_abdomen" / "labels.nii.gz")), 4, labels=True)
    sitk.WriteImage(abdomen, str(archive / "pt1" / "ct.nii.gz"))
    sitk.WriteImage(truth, str(root / "truth.nii.gz"))  # outside the archive
    pelvis = _shrink(sitk.ReadImage(str(cases / "sts_002_ct" / "image.nii.gz")), 2)  # no liver or spleen in view
    sitk.WriteImage(pelvis, str(archive / "pt2" / "ct.nii.gz"))
    (archive / "bad" / "broken.nii.gz").write_bytes((archive / "pt2" / "ct.nii.gz").read_bytes()[:3000])

    liver_only = root / "support2"
    liver_only.mkdir()
    labels = sitk.ReadImage(str(cases / SUPPORT / "labels.nii.gz"))
    arr = sitk.GetArrayFromImage(labels)
    only = sitk.GetImageFromArray(np.where(arr == 5, 5, 0).astype(arr.dtype))
    only.CopyInformation(labels)
    sitk.WriteImage(only, str(liver_only / "labels.nii.gz"))
    (liver_only / "labels.json").write_text(json.dumps({"5": "liver"}))
    image = cases / SUPPORT / "image.nii.gz"
    return {
        "archive": str(archive),
        "truth": root / "truth.nii.gz",
        "supports": [f"{image}:{cases / SUPPORT / 'labels.nii.gz'}", f"{image}:{liver_only / 'labels.nii.gz'}"],
        "liver_only": str(liver_only / "labels.nii.gz"),
    }


def test_row_status_maps_every_outcome():
    assert row_status("ok", 10) == "ok" and row_status("ok", 0) == "not_found"
    assert row_status("low_confidence", 10) == "low_confidence" and row_status("low_confidence", 0) == "not_found"
    assert row_status("no_support", 0) == "missing_in_supports"
    assert row_status("not_found", 0) == row_status("empty", 0) == "not_found"
    assert row_status("outside_fov", 0) == row_status("outside_view", 0) == "outside_view"
    statuses = ("ok", "low_confidence", "no_support", "not_found", "outside_fov", "outside_view", "empty")
    assert {row_status(s, n) for s in statuses for n in (0, 1)} <= set(PRELABEL_STATUSES)


def test_cli_without_supports_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cohort", "prelabel", "--archive", str(tmp_path), "--organs", "liver", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "--support" in capsys.readouterr().err


def test_cli_with_no_usable_support_exits_2_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "ct.nii.gz"
    cmd = [sys.executable, "-m", "uae_ray.cli", "cohort", "prelabel", "--archive", str(tmp_path), "--support",
           f"{missing}:{tmp_path / 'nowhere' / 'labels.nii.gz'}", "--organs", "liver", "--out", str(tmp_path / "o")]
    env = {**os.environ, "UAE_TRITON_URL": "", "UAE_RAY_ADDRESS": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(missing) in proc.stderr and "no usable support scan (1 given)" in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize("job", ["embed", "landmarks", "track", "register", "prelabel", "query"])
def test_job_entrypoints_are_the_cli_verbs(job):
    jobs = Path(__file__).resolve().parents[2] / "jobs"
    proc = subprocess.run([sys.executable, str(jobs / f"cohort_{job}.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: uae-ray cohort {job} "), proc.stderr[-2000:]
    bad = subprocess.run([sys.executable, str(jobs / f"cohort_{job}.py")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "required" in bad.stderr  # --out (and the job's other inputs) are required


@pytest.mark.data
def test_organs_no_support_has_at_all_is_an_error(shared_data, tmp_path):
    case = shared_data / "cases" / SUPPORT
    with pytest.raises(PrelabelError, match="no support scan has any of the organs brain"):
        run_cohort_prelabel(str(tmp_path), [f"{case}/image.nii.gz:{case}/labels.nii.gz"], "brain", str(tmp_path / "o"))
    with pytest.raises(PrelabelError, match="no organ named"):
        run_cohort_prelabel(str(tmp_path), [f"{case}/image.nii.gz:{case}/labels.nii.gz"], " , ", str(tmp_path / "o"))


# -- a job with a local Ray instance and in-process models ---------------------------------------


# The localizer's embedding model of the accuracy bounds below (measured with it). The default
# tiny-uae-v3 does not localize the spleen in the 4x-downsampled upper-abdomen slab from this
# support (its cross-patient CT matching, part (b) of bench accuracy, is weaker than tiny-v0's).
MODEL = "tiny-v0"

@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(local_ray, shared_data, tmp_path_factory):
    import logging

    root = tmp_path_factory.mktemp("prelabel")
    inputs = _build_inputs(shared_data, root)
    out = str(root / "out")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logging.getLogger("uae_ray").addHandler(handler)
    try:
        summary = run_cohort_prelabel(inputs["archive"], inputs["supports"], ORGANS, out, boxes="wpl", checkpoint=MODEL)
    finally:
        logging.getLogger("uae_ray").removeHandler(handler)
    return {**inputs, "out": out, "summary": summary, "warnings": [r.getMessage() for r in records]}


@pytest.mark.data
@pytest.mark.slow
def test_prelabel_writes_label_maps_index_and_manifest(job):
    summary, out = job["summary"], job["out"]
    assert summary["scans"] == 3 and summary["done"] == 2 and summary["failed"] == 1, summary
    assert summary["missing_in_supports"] == ["brain"] and summary["supports"] == 2
    # the support that lacks the spleen and the organ no support has are named once on the driver
    assert any(job["liver_only"] in w and "spleen" in w and "not used for spleen" in w for w in job["warnings"])
    assert any(w.startswith("brain: no support scan has this organ") for w in job["warnings"])

    scans = {Path(s.uri).parent.name: s for s in discover_scans(job["archive"])}
    table = pq.read_table(index_uri(out))
    assert table.schema.equals(PRELABEL, check_metadata=False) and table.num_rows == 3 * 3
    rows = {(r["scan_id"], r["organ"]): r for r in table.to_pylist()}
    for r in rows.values():
        assert re.fullmatch(r"[0-9a-f]{16}", r["scan_id"])  # hashed ids only, no paths or names
    assert "pt1" not in str(table.to_pylist()) and "broken" not in str(table.column("scan_id").to_pylist())

    pt1, pt2, bad = scans["pt1"].scan_id, scans["pt2"].scan_id, scans["bad"].scan_id
    for organ, label in (("liver", 1), ("spleen", 2)):
        r = rows[(pt1, organ)]
        assert r["status"] in MASKED and r["label"] == label and r["voxels"] > 1000 and r["n_slices"] > 0, r
        assert np.all(np.isfinite([r[k] for k in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")]))
        assert r["xmin"] < r["xmax"] and r["zmin"] <= r["zmax"] and r["seconds"] > 0
        assert r["mask_uri"] == labels_uri(out, pt1) and r["localizer"] == "embedding" and r["boxes"] == "wpl"
        assert r["localizer_version"] == summary["localizer_version"] and r["sam_version"] == summary["sam_version"]
    assert 300 < rows[(pt1, "liver")]["volume_ml"] < 900  # truth: about 560 ml
    for scan in (pt1, pt2):  # an organ no support has: marked in every scan, the others still done
        r = rows[(scan, "brain")]
        assert r["status"] == "missing_in_supports" and "no support scan has this organ" in r["message"]
        assert r["voxels"] == 0 and np.isnan(r["xmin"])
    for organ in ("liver", "spleen"):  # a pelvis CT: the organs are not in its field of view
        r = rows[(pt2, organ)]
        assert r["status"] in ("not_found", "outside_view", "low_confidence") and r["message"], r
    for organ in ("liver", "spleen", "brain"):
        r = rows[(bad, organ)]
        assert r["status"] == "error" and r["message"].startswith(f"scan {bad}: ") and r["mask_uri"] is None
        assert "broken.nii.gz" not in r["message"]  # the index holds no paths; the manifest names the file

    manifest = Manifest(join(out, PRELABEL_MANIFEST))
    errors = [r for r in manifest.records() if r.status == "error"]
    assert len(errors) == 1 and errors[0].uri.endswith("bad/broken.nii.gz") and "broken.nii.gz" in errors[0].error
    assert "\n" not in errors[0].error
    assert manifest.status(pt1) == manifest.status(pt2) == "ok"


@pytest.mark.data
@pytest.mark.slow
def test_label_maps_are_on_the_scan_grid_and_overlap_the_truth(job):
    out, archive = job["out"], Path(job["archive"])
    scans = {Path(s.uri).parent.name: s for s in discover_scans(str(archive))}
    for name in ("pt1", "pt2"):
        path = labels_uri(out, scans[name].scan_id)
        seg = sitk.ReadImage(path)
        image = sitk.ReadImage(str(archive / name / "ct.nii.gz"))
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetOrigin(), image.GetOrigin()) and np.allclose(seg.GetSpacing(), image.GetSpacing())
        assert np.allclose(seg.GetDirection(), image.GetDirection())
        sidecar = json.loads(Path(path[: -len(".nii.gz")] + ".json").read_text())
        assert sidecar == {"1": "liver", "2": "spleen", "3": "brain"}
    assert not list((Path(out) / "labels").glob(".*"))  # no temporary files left behind
    arr = sitk.GetArrayFromImage(sitk.ReadImage(labels_uri(out, scans["pt1"].scan_id)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(job["truth"])))
    assert 3 not in np.unique(arr)
    for k, true_label, bound in ((1, 5, LIVER_BOUND), (2, 1, SPLEEN_BOUND)):
        pred, true = arr == k, truth == true_label
        dsc = 2 * np.logical_and(pred, true).sum() / (pred.sum() + true.sum())
        assert dsc > bound, (k, dsc)
    assert not sitk.GetArrayFromImage(sitk.ReadImage(labels_uri(out, scans["pt2"].scan_id))).any()


# Measured (sam-vit-tiny-v1+5e122231, one support of another patient, WPL boxes, the target
# downsampled 4x in-plane): liver 0.79, spleen 0.62 (sam-vit-tiny-v0: 0.68, 0.68). The target is one of the model's training cases (model
# card); the bounds leave a margin.
LIVER_BOUND = 0.5
SPLEEN_BOUND = 0.5


@pytest.mark.data
@pytest.mark.slow
def test_qc_report_has_the_contour_images(job):
    out = job["out"]
    report = Path(job["summary"]["report_uri"])
    assert report == Path(out) / "qc" / "prelabel.html"
    page = report.read_text()
    rows = [r for r in pq.read_table(index_uri(out)).to_pylist() if r["status"] in MASKED]
    assert len(rows) == 2 and page.count('src="data:image/png;base64,') == len(rows)
    for r in rows:
        png = Path(qc_uri(out, r["scan_id"], r["label"]))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "missing_in_supports" in page and page.count(">error<") == 3
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "pt1" not in text and "broken.nii.gz" not in text  # hashed scan ids only


@pytest.mark.data
@pytest.mark.slow
def test_rerun_skips_the_done_scans(job):
    before = {p: p.stat().st_mtime_ns for p in (Path(job["out"]) / "labels").glob("*.nii.gz")}
    again = run_cohort_prelabel(job["archive"], job["supports"], ORGANS, job["out"], boxes="wpl", checkpoint=MODEL)
    assert again["skipped"] == 2 and again["done"] == 2 and again["failed"] == 1 and again["rows"] == 9, again
    assert {p: p.stat().st_mtime_ns for p in (Path(job["out"]) / "labels").glob("*.nii.gz")} == before
    # other organs are another job: the done scans are redone (last test: it rewrites the outputs)
    other = run_cohort_prelabel(job["archive"], job["supports"][:1], "liver,spleen", job["out"], boxes="wpl",
                                limit=2, qc=False, checkpoint=MODEL)
    assert other["scans"] == 2 and other["skipped"] == 0 and other["done"] == 1 and "report_uri" not in other
    counts = other["status_counts"]
    assert other["rows"] == 4 and counts["error"] == 2 and sum(counts.get(s, 0) for s in MASKED) == 2, other


# -- over the real local stack: S3 archive and outputs, Triton models, Ray head ------------------


@pytest.mark.stack
@pytest.mark.data
@pytest.mark.slow
def test_prelabel_over_the_stack(services, submit_job, shared_data, tmp_path):
    from uae_ray.storage import ensure_bucket, exists, read_bytes, read_labels_uri, read_table, upload_file

    inputs = _build_inputs(shared_data, tmp_path)
    archive, out = "s3://prelabel-test/archive", "s3://prelabel-test/out"
    ensure_bucket(archive)
    upload_file(Path(inputs["archive"]) / "pt1" / "ct.nii.gz", join(archive, "pt1", "ct.nii.gz"))
    upload_file(Path(inputs["archive"]) / "bad" / "broken.nii.gz", join(archive, "bad", "broken.nii.gz"))
    case = shared_data / "cases" / SUPPORT
    for name in ("image.nii.gz", "labels.nii.gz", "meta.json"):  # organ names from meta.json in S3
        upload_file(case / name, join("s3://prelabel-test/support", name))
    support = "s3://prelabel-test/support/image.nii.gz:s3://prelabel-test/support/labels.nii.gz"

    summary = run_cohort_prelabel(archive, [support], "liver,brain", out, services["UAE_TRITON_URL"],
                                  services["UAE_RAY_ADDRESS"], boxes="wpl")
    assert summary["done"] == 1 and summary["failed"] == 1 and summary["missing_in_supports"] == ["brain"], summary
    rows = read_table(index_uri(out)).to_pylist()
    ok = [r for r in rows if r["status"] in MASKED]
    assert len(rows) == 4 and len(ok) == 1 and ok[0]["organ"] == "liver" and ok[0]["voxels"] > 1000
    assert ok[0]["mask_uri"].startswith("s3://prelabel-test/out/labels/")
    seg = read_labels_uri(ok[0]["mask_uri"])
    target = sitk.ReadImage(str(Path(inputs["archive"]) / "pt1" / "ct.nii.gz"))
    assert seg.GetSize() == target.GetSize() and np.allclose(seg.GetOrigin(), target.GetOrigin())
    assert json.loads(read_bytes(ok[0]["mask_uri"][: -len(".nii.gz")] + ".json")) == {"1": "liver", "2": "brain"}
    assert summary["report_uri"] == "s3://prelabel-test/out/qc/prelabel.html" and exists(summary["report_uri"])
    assert read_bytes(summary["report_uri"]).decode().count("data:image/png;base64,") == 1

    again = run_cohort_prelabel(archive, [support], "liver,brain", out, services["UAE_TRITON_URL"],
                                services["UAE_RAY_ADDRESS"], boxes="wpl")
    assert again["skipped"] == 1 and again["done"] == 1 and again["failed"] == 1

    # the same job through `ray job submit`, into a new output
    job_out = "s3://prelabel-test/job-out"
    proc = submit_job("prelabel", "--archive", archive, "--support", support, "--organs", "liver", "--boxes", "wpl",
                      "--out", job_out, "--triton", services["UAE_TRITON_URL"])
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert Manifest(join(job_out, PRELABEL_MANIFEST)).counts() == {"ok": 1, "error": 1}
    job_rows = read_table(index_uri(job_out)).to_pylist()
    assert [r["organ"] for r in job_rows if r["status"] in MASKED] == ["liver"]


@pytest.mark.stack
@pytest.mark.data
@pytest.mark.slow
def test_prelabel_writes_dicom_seg_for_dicom_series_in_s3(services, shared_data, tmp_path):
    import highdicom as hd

    from uae_ray.cohort.prelabel import dicom_seg_uri
    from uae_ray.storage import ensure_bucket, read_bytes, read_labels_uri, read_table, upload_file

    archive, out = "s3://prelabel-dicom/archive", "s3://prelabel-dicom/out"
    ensure_bucket(archive)
    series = shared_data / "dicom" / "ts_upper_abdomen"
    for f in series.iterdir():
        upload_file(f, join(archive, "pt1", "series", f.name))
    small = _shrink(sitk.ReadImage(str(shared_data / "cases" / "sts_002_ct" / "image.nii.gz")), 2)
    sitk.WriteImage(small, str(tmp_path / "ct.nii.gz"))
    upload_file(tmp_path / "ct.nii.gz", join(archive, "pt2", "ct.nii.gz"))  # not DICOM: no SEG
    case = shared_data / "cases" / SUPPORT
    support = f"{case / 'image.nii.gz'}:{case / 'labels.nii.gz'}"

    summary = run_cohort_prelabel(archive, [support], "liver", out, services["UAE_TRITON_URL"],
                                  services["UAE_RAY_ADDRESS"], boxes="wpl", qc=False, dicom_seg=True)
    assert summary["done"] == 2 and summary["failed"] == 0, summary
    rows = {r["scan_id"]: r for r in read_table(index_uri(out)).to_pylist()}
    dicom_id = next(s.scan_id for s in discover_scans(archive) if s.kind == "dicom")
    liver = rows.pop(dicom_id)
    assert liver["status"] in MASKED and liver["dicom_seg_uri"] == dicom_seg_uri(out, dicom_id)
    assert all(r["dicom_seg_uri"] is None for r in rows.values())
    (tmp_path / "seg.dcm").write_bytes(read_bytes(liver["dicom_seg_uri"]))
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    assert str(seg.PatientID) == dicom_id  # the series has no PatientID: the scan id stands in
    vol = seg.get_volume(combine_segments=True, relabel=False).array
    if seg.get_volume().affine[2, 0] < 0:
        vol = vol[::-1]
    labels = sitk.GetArrayFromImage(read_labels_uri(liver["mask_uri"]))
    np.testing.assert_array_equal(vol == 1, labels == 1)
