"""`cohort track` against the real local stack (Ray head, Triton, S3): two pairs of real-CT
scans in S3, one of them with a truncated follow-up; the good pair's tracks land in Parquet,
the bad one is recorded in the manifest, and a re-run skips the finished pair."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.cohort.pairs import ScanPair
from uae_ray.cohort.track import TRACK_MANIFEST, pair_lesions, run_cohort_track
from uae_ray.storage import Manifest, ensure_bucket, join, read_table, upload_file
from uae_ray.storage.schemas import TRACKS

CASE = "sts_002_ct"


def test_pair_lesions_name_the_bad_input(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,x,y\na,1,2\n")
    with pytest.raises(ValueError, match=f"{bad}: missing column"):
        pair_lesions(ScanPair("p", "/a.nii.gz", "/b.nii.gz", {"lesions": str(bad)}))
    with pytest.raises(ValueError, match="no lesions"):
        pair_lesions(ScanPair("p", str(tmp_path / "a.nii.gz"), "/b.nii.gz", {}))
    (tmp_path / "lesions.csv").write_text("name,x,y,z\nn1,1,2,3\n")  # the sidecar beside the baseline
    assert pair_lesions(ScanPair("p", str(tmp_path / "a.nii.gz"), "/b.nii.gz", {})).names == ("n1",)


@pytest.mark.stack
@pytest.mark.data
def test_cohort_track_over_the_stack(services, submit_job, shared_data, tmp_path):
    from uae_ray.data.synthetic import synthetic_warp
    from uae_ray.volume import read_image, read_labels

    folder = shared_data / "cases" / CASE
    image = read_image(folder / "image.nii.gz")
    warp = synthetic_warp(image, seed=3, max_fov_crop=0.0)
    labels = sitk.GetArrayFromImage(read_labels(folder / "labels.nii.gz"))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(np.argwhere(labels == 1).mean(0)[::-1].tolist()))

    archive = "s3://track-test/archive"
    ensure_bucket(archive)
    follow = tmp_path / "follow.nii.gz"
    sitk.WriteImage(warp.image, str(follow))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(follow.read_bytes()[:3000])
    lesions = tmp_path / "lesions.csv"
    lesions.write_text(f"name,x,y,z,radius_mm\ngtv,{centre[0]},{centre[1]},{centre[2]},23\nnowhere,900,900,900,\n")
    upload_file(folder / "image.nii.gz", join(archive, "pt1", "scan1.nii.gz"))
    upload_file(follow, join(archive, "pt1", "scan2.nii.gz"))
    upload_file(broken, join(archive, "pt1", "scan3.nii.gz"))
    upload_file(lesions, join(archive, "pt1", "lesions.csv"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "baseline,followup,lesions\n"
        "pt1/scan1.nii.gz,pt1/scan2.nii.gz,pt1/lesions.csv\n"
        "pt1/scan2.nii.gz,pt1/scan3.nii.gz,pt1/lesions.csv\n"  # truncated follow-up: this pair fails
    )
    out = "s3://track-test/out"
    summary = run_cohort_track(str(pairs), out, services["UAE_TRITON_URL"], archive,
                               ray_address=services["UAE_RAY_ADDRESS"])
    assert summary["pairs"] == 2 and summary["done"] == 1 and summary["failed"] == 1, summary
    assert summary["scans_embedded"] == 3

    table = read_table(summary["tracks_uri"])
    assert table.schema.equals(TRACKS, check_metadata=False) and table.num_rows == 2
    rows = {r["name"]: r for r in table.to_pylist()}
    truth = warp.to_warped(centre[None])[0]
    gtv = rows["gtv"]
    assert gtv["found"] and np.linalg.norm([gtv["x"] - truth[0], gtv["y"] - truth[1], gtv["z"] - truth[2]]) < 4.0
    assert gtv["method"] == "fixed-point+extent" and gtv["model_version"] == summary["model_version"]
    assert not rows["nowhere"]["found"] and "outside the baseline" in rows["nowhere"]["error"]
    for key in ("pair_id", "baseline_id", "followup_id"):
        assert len(gtv[key]) == 16 and int(gtv[key], 16) >= 0  # hashed ids only, no paths or names
    assert "pt1" not in str(table.to_pylist())

    manifest = Manifest(join(out, TRACK_MANIFEST))
    bad = [r for r in manifest.records() if r.status == "error"]
    assert len(bad) == 1 and "scan3.nii.gz" in bad[0].error and "follow-up embedding failed" in bad[0].error

    again = run_cohort_track(str(pairs), out, services["UAE_TRITON_URL"], archive,
                             ray_address=services["UAE_RAY_ADDRESS"])
    assert again["skipped"] == 1 and again["done"] == 1 and again["rows"] == 2 and again["scans_embedded"] == 1

    # the same job through `ray job submit`, into a new output, reusing the stored embeddings
    upload_file(pairs, join(archive, "pairs.csv"))
    proc = submit_job("track", "--pairs", join(archive, "pairs.csv"), "--archive", archive,
                      "--out", "s3://track-test/job-out", "--embeddings", out, "--triton", services["UAE_TRITON_URL"])
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert Manifest(join("s3://track-test/job-out", TRACK_MANIFEST)).counts() == {"ok": 1, "error": 1}
    assert read_table(join("s3://track-test/job-out", "tracks", "tracks.parquet")).num_rows == 2
