"""Cohort jobs against the real local stack (Ray head, Triton, S3): Parquet written to S3 and
read back, re-runs skip finished scans, a corrupt scan is reported and the others finish, and
`ray job submit` runs the job entrypoints."""

from __future__ import annotations


import numpy as np
import pytest

from uae_ray.cohort.embed import EMBED_MANIFEST, run_cohort_embed
from uae_ray.cohort.landmarks import run_cohort_landmarks
from uae_ray.cohort.maps_io import embeddings_uri, read_maps
from uae_ray.storage import Manifest, discover_scans, ensure_bucket, join, read_table, upload_file
from uae_ray.tasks.points_io import read_points_csv

pytestmark = pytest.mark.stack
CASES = ("ts_example_ct", "sts_001_ct", "matrad_hn_frm2")


@pytest.fixture(scope="module")
def archive(services, shared_data, tmp_path_factory):
    """Three real CTs, the DICOM series of a fourth, and one truncated file, in S3."""
    root = "s3://cohort-test/archive"
    ensure_bucket(root)
    for case in CASES:
        upload_file(shared_data / "cases" / case / "image.nii.gz", join(root, f"{case}.nii.gz"))
    for f in sorted((shared_data / "dicom" / "ts_upper_abdomen").iterdir()):
        upload_file(f, join(root, "upper_abdomen_dicom", f.name))
    broken = tmp_path_factory.mktemp("broken") / "broken.nii.gz"
    broken.write_bytes((shared_data / "cases" / "sts_002_ct" / "image.nii.gz").read_bytes()[:4000])
    upload_file(broken, join(root, "bad", "broken.nii.gz"))
    return root


def test_embed_writes_parquet_skips_on_rerun_and_reports_the_corrupt_scan(services, archive):
    out = "s3://cohort-test/out"
    first = run_cohort_embed(archive, out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"])
    assert first["scans"] == 5 and first["done"] == 4 and first["failed"] == 1, first

    manifest = Manifest(join(out, EMBED_MANIFEST))
    bad = [r for r in manifest.records() if r.status == "error"]
    assert len(bad) == 1 and bad[0].uri.endswith("bad/broken.nii.gz")
    assert "broken.nii.gz" in bad[0].error and "\n" not in bad[0].error

    for scan in discover_scans(archive):
        if manifest.status(scan.scan_id) != "ok":
            continue
        maps = read_maps(embeddings_uri(out, scan.scan_id))
        assert maps.model_version == first["model_version"]
        norms = np.linalg.norm(maps.local.astype(np.float32), axis=0)
        np.testing.assert_allclose(norms[maps.valid], 1.0, atol=2e-2)
        assert maps.valid.any() and maps.global_.shape[0] > 0

    second = run_cohort_embed(archive, out, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"])
    assert second["skipped"] == 4 and second["done"] == 0 and second["failed"] == 1, second


def test_landmarks_from_stored_embeddings(services, archive, shared_data, tmp_path):
    case = shared_data / "cases" / "ts_example_ct"
    points = tmp_path / "points.csv"
    points.write_text("\n".join((case / "landmarks.csv").read_text().splitlines()[:6]) + "\n")
    out = "s3://cohort-test/out"
    summary = run_cohort_landmarks(
        archive, out, str(case / "image.nii.gz"), str(points), services["UAE_TRITON_URL"],
        ray_address=services["UAE_RAY_ADDRESS"],
    )
    assert summary["done"] == 4 and summary["failed"] == 1, summary
    table = read_table(summary["detections_uri"])
    assert table.num_rows == 4 * 5
    assert set(table.column_names) >= {"scan_id", "name", "x", "y", "z", "score", "found", "method", "model_version"}
    assert set(table.column("method").to_pylist()) == {"fixed-point"}
    # the template itself is in the archive: its points are found where they are
    self_id = next(s.scan_id for s in discover_scans(archive) if s.uri.endswith("ts_example_ct.nii.gz"))
    rows = [r for r in table.to_pylist() if r["scan_id"] == self_id]
    truth = read_points_csv(points)
    found = np.array([[r["x"], r["y"], r["z"]] for r in sorted(rows, key=lambda r: truth.names.index(r["name"]))])
    assert np.linalg.norm(found - truth.xyz, axis=1).max() < 4.0
    assert all(r["found"] for r in rows)

    again = run_cohort_landmarks(
        archive, out, str(case / "image.nii.gz"), str(points), services["UAE_TRITON_URL"],
        ray_address=services["UAE_RAY_ADDRESS"],
    )
    assert again["skipped"] == 4 and again["rows"] == 20


def test_ray_job_submit_runs_the_embed_job(services, archive, submit_job):
    proc = submit_job("embed", "--archive", archive, "--out", "s3://cohort-test/job-out",
                      "--triton", services["UAE_TRITON_URL"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    manifest = Manifest(join("s3://cohort-test/job-out", EMBED_MANIFEST))
    assert manifest.counts() == {"ok": 4, "error": 1}  # a bad scan is recorded; the job succeeds


def test_query_over_stored_embeddings_coarse_then_refined(services, archive, shared_data, tmp_path):
    from uae_ray.cohort.query import QueryInputError, run_cohort_query

    case = shared_data / "cases" / "ts_example_ct"
    points = tmp_path / "points.csv"
    points.write_text("\n".join((case / "landmarks.csv").read_text().splitlines()[:6]) + "\n")
    truth = read_points_csv(points)
    embeddings = "s3://cohort-test/out"
    run_cohort_embed(archive, embeddings, services["UAE_TRITON_URL"], services["UAE_RAY_ADDRESS"])  # no-op if done
    self_id = next(s.scan_id for s in discover_scans(archive) if s.uri.endswith("ts_example_ct.nii.gz"))

    def self_rows(summary):
        table = read_table(summary["table_uri"])
        assert table.num_rows == 4 * len(truth.names) and summary["failed"] == 0, summary
        rows = sorted((r for r in table.to_pylist() if r["scan_id"] == self_id), key=lambda r: truth.names.index(r["name"]))
        return rows, np.array([[r["x"], r["y"], r["z"]] for r in rows])

    coarse = run_cohort_query(str(case / "image.nii.gz"), str(points), embeddings, "s3://cohort-test/query-coarse",
                              services["UAE_TRITON_URL"], refine=False)
    rows, xyz = self_rows(coarse)
    assert all(r["found"] is None and not r["refined"] for r in rows)
    assert np.linalg.norm(xyz - truth.xyz, axis=1).max() < 30.0  # within ~one 16 mm global voxel
    assert coarse["coarse_s_per_1000_scans"] > 0

    fine = run_cohort_query(str(case / "image.nii.gz"), str(points), embeddings, "s3://cohort-test/query-fine",
                            services["UAE_TRITON_URL"])
    rows, xyz = self_rows(fine)
    assert all(r["refined"] and r["found"] for r in rows)
    assert np.linalg.norm(xyz - truth.xyz, axis=1).max() < 4.0
    coarse_xyz = np.array([[r["coarse_x"], r["coarse_y"], r["coarse_z"]] for r in rows])
    np.testing.assert_allclose(coarse_xyz, self_rows(coarse)[1])  # the same coarse pass

    with pytest.raises(QueryInputError, match="no stored embeddings of model"):
        run_cohort_query(str(case / "image.nii.gz"), str(points), "s3://cohort-test/nothing-here",
                         "s3://cohort-test/query-none", services["UAE_TRITON_URL"])
