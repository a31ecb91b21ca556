"""`cohort register`: bad input gives clear errors (no stack needed), and a job over the real
local stack (Ray head, Triton, S3) registers a good pair, records a bad one and skips the
finished pair on a re-run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.cohort.pairs import PairsError, ScanPair
from uae_ray.cohort.register import (
    REGISTER_MANIFEST,
    RegisterSettings,
    check_same_patient,
    register_pair,
    run_cohort_register,
)
from uae_ray.storage import Manifest, ensure_bucket, join, read_bytes, read_table, upload_file
from uae_ray.storage.schemas import TRANSFORMS

CASE = "sts_002_ct"


def _settings(out, **kw) -> RegisterSettings:
    base = dict(out=str(out), embeddings=str(out), manifest=str(out / "manifest"), kind="rigid", refine=False,
                model_version="m", triton_url=None, checkpoint=None, fixed_modality=None, moving_modality=None,
                same_patient=False, env={})
    return RegisterSettings(**{**base, **kw})


def test_different_patients_fail_same_patient_without_revealing_ids(tmp_path):
    for name, patient in (("a", "Jane Doe 123"), ("b", "John Roe 456"), ("c", "Jane Doe 123")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "image.nii.gz").write_bytes(b"")
        (tmp_path / name / "meta.json").write_text(json.dumps({"patient": patient}))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "image.nii.gz").write_bytes(b"")
    img = lambda n: str(tmp_path / n / "image.nii.gz")  # noqa: E731
    check_same_patient(ScanPair("p1", img("a"), img("c")))
    with pytest.raises(ValueError, match="different patients") as err:
        check_same_patient(ScanPair("p2", img("a"), img("b")))
    assert "Doe" not in str(err.value) and "Roe" not in str(err.value)
    with pytest.raises(ValueError, match="needs a patient id .* for the moving scan"):
        check_same_patient(ScanPair("p3", img("a"), img("d")))

    # in a task, the failure is a manifest record, not an exception
    record = register_pair(ScanPair("p2", img("a"), img("b")), _settings(tmp_path / "out", same_patient=True))
    assert record["status"] == "error" and "different patients" in record["error"]


def test_mismatched_modality_flags_are_a_pair_error(tmp_path):
    pair = ScanPair("p1", "/x/ct.nii.gz", "/x/mr.nii.gz", {"moving_modality": "MR"})
    record = register_pair(pair, _settings(tmp_path / "out", moving_modality="CT"))
    assert record["status"] == "error"
    assert record["error"] == "pair p1: --moving-modality CT but its moving_modality column says MR"


def test_an_empty_pair_list_is_an_error(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\n")
    with pytest.raises(PairsError, match=f"{pairs}: no pairs"):
        run_cohort_register(str(pairs), str(tmp_path / "out"), None)
    with pytest.raises(PairsError, match="missing column"):
        pairs.write_text("baseline,followup\na,b\n")
        run_cohort_register(str(pairs), str(tmp_path / "out"), None)


@pytest.mark.stack
@pytest.mark.data
def test_cohort_register_over_the_stack(services, submit_job, shared_data, tmp_path):
    from uae_ray.tasks.transforms import transform_from_bytes

    image_path = shared_data / "cases" / CASE / "image.nii.gz"
    fixed = sitk.ReadImage(str(image_path))
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    s = sitk.Euler3DTransform()
    s.SetCenter(tuple(centre))
    s.SetRotation(0.1, 0.05, -0.12)
    s.SetTranslation((10.0, 8.0, -6.0))  # moving -> fixed; the truth is its inverse
    moving = tmp_path / "moving.nii.gz"
    sitk.WriteImage(sitk.Resample(fixed, fixed, s, sitk.sitkLinear, -1024.0, fixed.GetPixelID()), str(moving))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(moving.read_bytes()[:3000])

    archive = "s3://register-test/archive"
    ensure_bucket(archive)
    upload_file(image_path, join(archive, "pt1", "ct1.nii.gz"))
    upload_file(moving, join(archive, "pt1", "ct2.nii.gz"))
    upload_file(broken, join(archive, "pt1", "ct3.nii.gz"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\npt1/ct1.nii.gz,pt1/ct2.nii.gz\npt1/ct1.nii.gz,pt1/ct3.nii.gz\n")
    out = "s3://register-test/out"
    kw = dict(archive=archive, ray_address=services["UAE_RAY_ADDRESS"], fixed_modality="CT")
    summary = run_cohort_register(str(pairs), out, services["UAE_TRITON_URL"], **kw)
    assert summary["pairs"] == 2 and summary["done"] == 1 and summary["failed"] == 1, summary

    table = read_table(summary["transforms_uri"])
    assert table.schema.names == TRANSFORMS.names and table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["type"] == "rigid" and row["n_correspondences"] >= 20 and row["inlier_fraction"] > 0.8
    assert len(row["pair_id"]) == 16 and "pt1" not in json.dumps({k: v for k, v in row.items() if k != "tfm_uri"})
    tx = transform_from_bytes(read_bytes(row["tfm_uri"]))
    np.testing.assert_allclose(tx.GetParameters(), row["parameters"])
    truth = s.GetInverse()
    for idx in ([30, 40, 20], [80, 70, 25], [60, 100, 30]):
        p = fixed.TransformContinuousIndexToPhysicalPoint(idx)
        assert np.linalg.norm(np.subtract(tx.TransformPoint(p), truth.TransformPoint(p))) < 3.0

    manifest = Manifest(join(out, REGISTER_MANIFEST))
    bad = [r for r in manifest.records() if r.status == "error"]
    assert len(bad) == 1 and "ct3.nii.gz" in bad[0].error and "\n" not in bad[0].error

    again = run_cohort_register(str(pairs), out, services["UAE_TRITON_URL"], **kw)
    assert again["skipped"] == 1 and again["done"] == 1 and again["rows"] == 1, again

    # the same job through `ray job submit`, into a new output, reusing the stored embeddings
    upload_file(pairs, join(archive, "pairs.csv"))
    job_out = "s3://register-test/job-out"
    proc = submit_job("register", "--pairs", join(archive, "pairs.csv"), "--archive", archive,
                      "--out", job_out, "--embeddings", out, "--fixed-modality", "CT",
                      "--triton", services["UAE_TRITON_URL"])
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert Manifest(join(job_out, REGISTER_MANIFEST)).counts() == {"ok": 1, "error": 1}
    job_row = read_table(join(job_out, "transforms", "transforms.parquet")).to_pylist()[0]
    np.testing.assert_allclose(job_row["parameters"], row["parameters"], atol=1e-6)
