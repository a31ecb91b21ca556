"""``uae-ray bench watch``: one ``uae-ray watch`` cycle over new series of a real PACS.

``n_series`` DICOM studies are made from head-neck CTs of ``../shared/data`` (``n_series / 2``
patients, each with a first study and a follow-up a year later moved by a known translation,
the first study's lesion given as a configured lesions file) and stored in the PACS with
STOW-RS. Once the PACS reports them stable, one cycle runs the full pipeline (embed, landmarks
of a template, prelabel with that template as support, track and register each follow-up to
its prior, SEG and SR sent back) against the stack's S3, Ray and Triton. Reported:

- per step: wall seconds and seconds per series (per pair for track and register);
- overhead: discovery (the changes feed read, median of ``repeats`` reads after the cycle as
  well as the cycle's own), fetch (WADO-RS + NIfTI write) per series, STOW-RS per object sent,
  and what the cycle spent outside the steps (report, manifests, cursor).

Every figure is of one cycle on this machine (a cycle of 20 series runs for minutes on a CPU:
its steps are the cohort jobs', whose speed ``bench cohort`` measures over several runs).
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from uae_ray.bench.common import format_table, machine_info, write_json

logger = logging.getLogger(__name__)

SHIFT_MM = (4.0, -3.0, 2.0)
ORGANS = "brainstem,mandible"
PER_PAIR = ("track", "register")


def _cases(data_dir: Path, n_patients: int) -> tuple[list[str], str]:
    """``n_patients`` openkbp cases for the studies and one more, with labels, as template."""
    from uae_ray.data.cases import load_cases

    cases = [c.case_id for c in load_cases(data_dir, "CT") if c.case_id.startswith("openkbp_")]
    with_labels = [c for c in cases if (data_dir / "cases" / c / "labels.nii.gz").is_file()
                   and (data_dir / "cases" / c / "landmarks.csv").is_file()]
    if len(cases) < n_patients + 1 or not with_labels:
        raise ValueError(f"{data_dir}: {len(cases)} openkbp cases, {n_patients + 1} needed")
    template = with_labels[-1]
    return [c for c in cases if c != template][:n_patients], template


def make_studies(data_dir: Path, n_series: int, root: Path) -> tuple[list, Path, Path, list[str], str]:
    """The studies (first, follow-up per patient), the lesions folder, the pipeline file, the
    cases used and the template case."""
    import SimpleITK as sitk

    from uae_ray.bench.dicom_studies import write_study

    if n_series < 2 or n_series % 2:
        raise ValueError(f"--series {n_series}: give an even number >= 2 (each patient has two studies)")
    cases, template = _cases(data_dir, n_series // 2)
    base = uuid.uuid4().int >> 40  # UIDs new to the PACS on every run (2.25.<int>: ITU-T X.667)
    lesions = root / "lesions"
    lesions.mkdir(parents=True)
    studies = []
    for i, case in enumerate(cases):
        ct = data_dir / "cases" / case / "image.nii.gz"
        patient = f"BENCH-{base % 100000}-{i}"
        first = write_study(root / "dcm", ct, f"p{i}a", patient, "20250110", base + 2 * i)
        follow = write_study(root / "dcm", ct, f"p{i}b", patient, "20260112", base + 2 * i + 1, SHIFT_MM)
        image = sitk.ReadImage(str(ct))
        centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
        (lesions / f"{first.study_uid}.csv").write_text("name,x,y,z\nl1,%.3f,%.3f,%.3f\n" % tuple(centre))
        studies += [first, follow]
    t = data_dir / "cases" / template
    pipeline = root / "pipeline.yaml"
    pipeline.write_text(f"""version: 1
steps:
  landmarks:
    - name: hn
      template: {t / 'image.nii.gz'}
      points: {t / 'landmarks.csv'}
  prelabel:
    supports: ["{t / 'image.nii.gz'}:{t / 'labels.nii.gz'}"]
    organs: {ORGANS}
  track:
    lesions: {lesions}
  register:
    kind: rigid
""")
    return studies, lesions, pipeline, cases, template


def run_watch_bench(data_dir: str | Path, out_json: str | Path, env: dict[str, str], n_series: int = 20,
                    checkpoint: str | None = None, repeats: int = 5, bucket: str = "bench-watch",
                    workdir: Path | None = None) -> dict[str, Any]:
    """Runs the benchmark (module docstring) against the services of ``env`` (the stack's client
    environment, already in ``os.environ``) and writes ``out_json``."""
    import tempfile

    from uae_ray.bench.dicom_studies import upload, wait_stable
    from uae_ray.storage import ensure_bucket
    from uae_ray.watch import DicomWebPacs, WatchSettings, load_pipeline, run_cycle

    data_dir = Path(data_dir)
    pacs = DicomWebPacs(env["UAE_PACS_URL"], env["UAE_PACS_USER"], env["UAE_PACS_PASSWORD"])
    with tempfile.TemporaryDirectory(prefix="uae-ray-bench-watch-", dir=workdir) as tmp:
        root = Path(tmp)
        studies, _, pipeline_file, cases, template = make_studies(data_dir, n_series, root)
        pipeline = load_pipeline(pipeline_file)
        if checkpoint:
            from dataclasses import replace

            pipeline = replace(pipeline, checkpoint=checkpoint)
        start = pacs.stable_studies_since(0)[1]
        clock = time.perf_counter()
        for study in studies:
            upload(pacs, study)
        upload_s = time.perf_counter() - clock
        logger.info("bench watch: %d studies stored in the PACS in %.1f s; waiting until they are stable",
                    len(studies), upload_s)
        wait_stable(pacs, start, studies, timeout_s=120 + 5 * len(studies))
        ensure_bucket(f"s3://{bucket}")
        out = f"s3://{bucket}/{uuid.uuid4().hex[:12]}"
        settings = WatchSettings("dicomweb+" + env["UAE_PACS_URL"], out, pipeline, env.get("UAE_TRITON_URL"),
                                 env.get("UAE_RAY_ADDRESS"), since=start)
        cycle = run_cycle(settings)
        reads = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            pacs.stable_studies_since(start)
            reads.append(time.perf_counter() - t0)
    if cycle["processed"] != n_series or cycle["failed"]:
        raise RuntimeError(f"bench watch: the cycle processed {cycle['processed']} of {n_series} series with "
                           f"{cycle['failed']} failed; see {cycle['report']}")
    steps = []
    for name, summary in cycle["steps"].items():
        step = name.split(":")[0]
        items = cycle["paired"] if step in PER_PAIR else cycle["processed"]
        steps.append({"step": name, "items": items, "per": "pair" if step in PER_PAIR else "series",
                      "seconds": summary["seconds"], "s_per_item": summary["seconds"] / items})
    s = cycle["seconds"]
    inside = sum(s.get(k, 0.0) for k in ("discover", "fetch", "steps", "send"))
    result = {
        "benchmark": "watch",
        "series": n_series, "patients": n_series // 2, "pairs": cycle["paired"],
        "pipeline": pipeline.steps, "model": checkpoint or "default", "organs": ORGANS,
        "cases": cases, "template": template,
        "steps": steps,
        "overhead": {
            "discover_s": s["discover"], "discover_repeat_median_s": statistics.median(reads),
            "discover_repeats": len(reads),
            "fetch_s": s["fetch"], "fetch_s_per_series": s["fetch"] / n_series,
            "send_s": s.get("send", 0.0), "objects_sent": cycle["sent"],
            "stow_s_per_object": s.get("send", 0.0) / max(1, cycle["sent"]),
            "report_and_bookkeeping_s": cycle["wall_s"] - inside,
            "source_upload_s_per_series": upload_s / n_series,
        },
        "cycle_wall_s": cycle["wall_s"], "s_per_series": cycle["wall_s"] / n_series,
        "machine": machine_info(),
    }
    write_json(out_json, result)
    return result


def watch_table(result: dict[str, Any]) -> str:
    """The per-step table, then the overheads."""
    rows = [{**r, "s_per_item": round(r["s_per_item"], 2)} for r in result["steps"]]
    o = result["overhead"]
    rows += [
        {"step": "discover (changes feed)", "items": 1, "per": "cycle", "seconds": o["discover_s"],
         "s_per_item": o["discover_repeat_median_s"]},
        {"step": "fetch (WADO-RS + NIfTI)", "items": result["series"], "per": "series", "seconds": o["fetch_s"],
         "s_per_item": o["fetch_s_per_series"]},
        {"step": "send (STOW-RS SEG + SR)", "items": o["objects_sent"], "per": "object", "seconds": o["send_s"],
         "s_per_item": o["stow_s_per_object"]},
        {"step": "report, manifests, cursor", "items": 1, "per": "cycle", "seconds": o["report_and_bookkeeping_s"],
         "s_per_item": o["report_and_bookkeeping_s"]},
        {"step": "whole cycle", "items": result["series"], "per": "series", "seconds": result["cycle_wall_s"],
         "s_per_item": result["s_per_series"]},
    ]
    for r in rows:
        r["seconds"] = float(np.round(r["seconds"], 2))
        r["s_per_item"] = float(np.round(r["s_per_item"], 3))
    return format_table(rows, ["step", "items", "per", "seconds", "s_per_item"])
