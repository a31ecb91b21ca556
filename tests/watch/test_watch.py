"""`uae-ray watch` against the real services: Orthanc (the stack's PACS), S3, the Ray head and
Triton. DICOM studies made from cases of ../shared/data (patient A: three studies a year apart,
the later ones moved by known translations; patient B: one study) are stored in Orthanc; watch
cycles process them; the SEG and SR are read back from Orthanc and checked against the tables
and label maps; a second cycle does nothing; a study stored afterwards is the only one
processed and is paired with its prior; a watcher killed mid-cycle and run again ends with the
tables of an undisturbed run; an S3 prefix of DICOM series is watched the same way, in place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.bench.dicom_studies import Study, upload, wait_stable, write_study
from uae_ray.stack import pacs as pacs_service

pytestmark = [
    pytest.mark.data,
    pytest.mark.stack,
    pytest.mark.skipif(not pacs_service.available(), reason=f"no PACS on this machine: {pacs_service.INSTALL_HINT}"),
]

LESION = (250.0, 260.0, 150.0)  # world LPS mm in patient A's first study
BOX_A = (120.0, 120.0, 100.0, 380.0, 380.0, 290.0)  # head of openkbp_pt1 (its case frame, mm)
BOX_B = (170.0, 190.0, 150.0, 430.0, 450.0, 340.0)  # head of openkbp_pt10
SHIFT_A2, SHIFT_A3 = (6.0, -4.0, 5.0), (-5.0, 7.0, -2.5)
TEMPLATE = "openkbp_pt20"
LANDMARKS = ("brainstem", "mandible", "parotid_gland_left")
ORGANS = ["brainstem", "mandible"]
BUCKET = "watch-test"


@pytest.fixture(scope="module")
def world(services, shared_data, tmp_path_factory):
    """The PACS with patient A's first two studies and patient B's, the pipeline file, and a
    client of the PACS."""
    from uae_ray.storage import ensure_bucket
    from uae_ray.watch import DicomWebPacs

    root = tmp_path_factory.mktemp("watch")
    pacs = DicomWebPacs(services["UAE_PACS_URL"], services["UAE_PACS_USER"], services["UAE_PACS_PASSWORD"])
    start = pacs.stable_studies_since(0)[1]
    cases = shared_data / "cases"
    ct_a, ct_b = cases / "openkbp_pt1" / "image.nii.gz", cases / "openkbp_pt10" / "image.nii.gz"
    studies = {  # cropped to the head (the steps' cost grows with the voxels)
        "a1": write_study(root / "dcm", ct_a, "a1", "PAT-A", "20250110", 71, box_mm=BOX_A),
        "a2": write_study(root / "dcm", ct_a, "a2", "PAT-A", "20260112", 72, SHIFT_A2, BOX_A),
        "b1": write_study(root / "dcm", ct_b, "b1", "PAT-B", "20250301", 73, box_mm=BOX_B),
        "a3": write_study(root / "dcm", ct_a, "a3", "PAT-A", "20270115", 74, SHIFT_A3, BOX_A),
    }
    for name in ("a1", "a2", "b1"):
        upload(pacs, studies[name])
    lesions = root / "lesions"
    lesions.mkdir()
    (lesions / f"{studies['a1'].study_uid}.csv").write_text("name,x,y,z\nl1,%s,%s,%s\n" % LESION)
    template = cases / TEMPLATE
    points = root / "points.csv"  # three of the template's landmarks (the matching cost is per point)
    rows = (template / "landmarks.csv").read_text().splitlines()
    points.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] in LANDMARKS]) + "\n")
    steps = f"""
  landmarks:
    - name: hn
      template: {template / 'image.nii.gz'}
      points: {points}
  track:
    lesions: {lesions}
  register:
    kind: rigid
"""
    prelabel = f"""
  prelabel:
    supports: ["{template / 'image.nii.gz'}:{template / 'labels.nii.gz'}"]
    organs: {','.join(ORGANS)}
    boxes: wpl
"""
    pipeline = root / "pipeline.yaml"
    pipeline.write_text("version: 1\nsteps:" + steps + prelabel)
    light = root / "pipeline-tables.yaml"  # the steps whose tables the kill test compares
    light.write_text("version: 1\nsteps:" + steps)
    ensure_bucket(f"s3://{BUCKET}")
    wait_stable(pacs, start, [studies[name] for name in ("a1", "a2", "b1")])
    return {"pacs": pacs, "studies": studies, "pipeline": pipeline, "light_pipeline": light, "start": start, "root": root,
            "source": "dicomweb+" + services["UAE_PACS_URL"], "env": services}


def _settings(world, out: str, since: int | None = None):
    from uae_ray.watch import WatchSettings, load_pipeline

    env = world["env"]
    return WatchSettings(world["source"], out, load_pipeline(world["pipeline"]), env["UAE_TRITON_URL"],
                         env["UAE_RAY_ADDRESS"], since)


@pytest.fixture(scope="module")
def cycles(world):
    """Three cycles on s3://watch-test/out1: the first three studies, nothing, then study a3."""
    from uae_ray.watch import run_cycle

    out = f"s3://{BUCKET}/out1"
    first = run_cycle(_settings(world, out, since=world["start"]))
    second = run_cycle(_settings(world, out))
    upload(world["pacs"], world["studies"]["a3"])
    wait_stable(world["pacs"], second["feed_last"], [world["studies"]["a3"]])
    third = run_cycle(_settings(world, out))
    return {"out": out, "first": first, "second": second, "third": third}


def _tracks(out: str) -> list[dict]:
    from uae_ray.storage import read_table

    return read_table(f"{out}/tracks/tracks.parquet").to_pylist()


def _scan_id(world, out: str, name: str) -> str:
    from uae_ray.storage.images import scan_id_for
    from uae_ray.watch.materialize import IMAGE_NAME, series_key, series_root

    root = series_root(out)
    return scan_id_for(f"{root}/{series_key(world['studies'][name].series_uid)}/{IMAGE_NAME}", root)


def test_first_cycle_processes_the_new_studies_and_pairs_the_follow_up(world, cycles):
    first = cycles["first"]
    assert first["studies"] == 3 and first["processed"] == 3 and first["paired"] == 1, first
    assert first["failed"] == 0, first
    tracks = [t for t in _tracks(cycles["out"]) if t["followup_id"] == _scan_id(world, cycles["out"], "a2")]
    assert len(tracks) == 1 and tracks[0]["found"], json.dumps({"tracks": tracks, "cycle": first}, default=str)
    expected = np.add(LESION, SHIFT_A2)
    assert np.linalg.norm(np.subtract([tracks[0][k] for k in "xyz"], expected)) < 3.0, tracks


def test_the_follow_up_is_registered_to_its_prior(world, cycles):
    from uae_ray.storage import read_table

    rows = read_table(f"{cycles['out']}/transforms/transforms.parquet").to_pylist()
    a2 = [r for r in rows if r["moving_id"] == _scan_id(world, cycles["out"], "a2")]
    assert len(a2) == 1 and a2[0]["fixed_id"] == _scan_id(world, cycles["out"], "a1"), rows
    # the moving scan is the prior moved by SHIFT_A2: the rigid translation recovers it
    np.testing.assert_allclose(a2[0]["parameters"][3:], SHIFT_A2, atol=1.0)


def test_a_second_cycle_does_nothing(cycles):
    second = cycles["second"]
    assert second["processed"] == 0 and second["failed"] == 0, second


def test_a_study_stored_later_is_the_only_one_processed_and_is_tracked_from_its_prior(world, cycles):
    third = cycles["third"]
    assert third["processed"] == 1 and third["paired"] == 1, json.dumps(third, default=str)
    a3 = _scan_id(world, cycles["out"], "a3")
    tracks = [t for t in _tracks(cycles["out"]) if t["followup_id"] == a3]
    assert len(tracks) == 1 and tracks[0]["found"]
    assert tracks[0]["baseline_id"] == _scan_id(world, cycles["out"], "a2")  # the most recent prior
    np.testing.assert_allclose([tracks[0][k] for k in "xyz"], np.add(LESION, SHIFT_A3), atol=3.0)


def _pacs_objects(world, study: Study, modality: str) -> list:
    pacs = world["pacs"]  # the pseudonymised SEG / SR are a study of their own in Orthanc: search all
    found = pacs.client.search_for_instances(search_filters={"StudyInstanceUID": study.study_uid, "Modality": modality},
                                             fields=["SeriesInstanceUID", "SOPInstanceUID"])
    return [pacs.client.retrieve_instance(study.study_uid, f["0020000E"]["Value"][0], f["00080018"]["Value"][0])
            for f in found]


@pytest.fixture
def strict_dicom(caplog):
    """Reading inside it: any pydicom / highdicom warning fails the test."""
    import pydicom

    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            yield caplog
    pydicom.config.settings.reading_validation_mode = old


def test_the_seg_in_the_pacs_matches_the_label_map_and_references_the_series(world, cycles, strict_dicom):
    import highdicom as hd

    from uae_ray.storage import read_labels_uri

    study = world["studies"]["a1"]
    segs = _pacs_objects(world, study, "SEG")
    assert len(segs) == 1, "one SEG per study, however often it was sent"
    seg = hd.seg.Segmentation.from_dataset(segs[0])
    assert seg.PatientID != "PAT-A" and "Doe" not in str(seg.PatientName)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    labels = sitk.GetArrayFromImage(read_labels_uri(f"{cycles['out']}/labels/{_scan_id(world, cycles['out'], 'a1')}.nii.gz"))
    organs = ORGANS
    instance_uids = [f"{study.series_uid}.{k + 1}" for k in range(labels.shape[0])]
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).SegmentLabel
        mask = seg.get_pixels_by_source_instance(instance_uids, segment_numbers=[number], combine_segments=True,
                                                 assert_missing_frames_are_empty=True)
        np.testing.assert_array_equal(mask > 0, labels == organs.index(name) + 1, err_msg=name)
    assert not strict_dicom.records


def test_the_sr_in_the_pacs_holds_the_tracked_lesion_and_references_the_series(world, cycles, strict_dicom):
    import highdicom as hd
    from highdicom.sr import ValueTypeValues

    study = world["studies"]["a3"]
    srs = _pacs_objects(world, study, "SR")
    assert len(srs) == 1
    sr = hd.sr.Comprehensive3DSR.from_dataset(srs[0])
    assert sr.PatientID != "PAT-A"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == study.series_uid
    points = [np.asarray(item.GraphicData, dtype=float)
              for item in hd.sr.utils.find_content_items(sr, value_type=ValueTypeValues.SCOORD3D, recursive=True)]
    track = next(t for t in _tracks(cycles["out"]) if t["followup_id"] == _scan_id(world, cycles["out"], "a3"))
    assert any(np.allclose(p, [track["x"], track["y"], track["z"]], atol=1e-3) for p in points)
    assert len(points) >= 2  # the lesion and the found landmarks
    assert not strict_dicom.records


def test_outputs_hold_no_patient_identity_and_the_report_lists_every_study(world, cycles):
    from uae_ray.storage import list_uris, read_bytes

    uris = list_uris(cycles["out"], recursive=True)
    for uri in uris:
        if uri.endswith((".parquet", ".json", ".csv", ".html")):
            data = read_bytes(uri)
            assert b"PAT-A" not in data and b"PAT-B" not in data and b"Doe^" not in data, uri
    report = read_bytes(cycles["first"]["report"]).decode()
    assert report.count("<img") >= 3 and "data:image/png;base64" in report
    records = json.loads(read_bytes(f"{cycles['out']}/watch/cursor.json"))
    assert records["position"] == cycles["third"]["feed_last"] and records["cycle"] == 3


def test_a_watcher_killed_mid_cycle_and_run_again_gives_the_undisturbed_tables(world, cycles):
    """The same studies on a new prefix, with the steps whose tables are compared (no prelabel)."""
    from uae_ray.storage import exists, list_uris, read_table

    out = f"s3://{BUCKET}/out2"
    cmd = [str(Path(sys.executable).parent / "uae-ray"), "watch", "--source", world["source"], "--out", out,
           "--pipeline", str(world["light_pipeline"]), "--once", "--since", str(world["start"]),
           "--triton", world["env"]["UAE_TRITON_URL"], "--ray-address", world["env"]["UAE_RAY_ADDRESS"]]
    env = {**os.environ, **{k: v for k, v in world["env"].items() if k != "RAY_ADDRESS"}}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # kill once the first embeddings are stored
        if exists(f"{out}/embeddings") and list_uris(f"{out}/embeddings"):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the watcher ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not exists(f"{out}/watch/cursor.json"), "the cursor must not move before the cycle's work is committed"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]

    def rows(prefix: str, table: str, drop: tuple[str, ...]) -> list[tuple]:
        t = read_table(f"{prefix}/{table}").to_pylist()
        return sorted(tuple(sorted((k, str(v)) for k, v in r.items() if k not in drop)) for r in t)

    for table, drop in (("tracks/tracks.parquet", ()), ("transforms/transforms.parquet", ("seconds", "tfm_uri")),
                        ("landmarks-hn/landmarks/detections.parquet", ())):
        assert rows(out, table, drop) == rows(cycles["out"], table, drop), table


def test_an_archive_source_is_watched_in_place_and_pairs_by_the_dicom_headers(world, tmp_path):
    """An S3 prefix of DICOM series: the first cycle takes every scan and pairs patient A's two
    studies by their headers; a second does nothing; a series uploaded later is the only one
    processed and is tracked from its prior."""
    from uae_ray.api.archive import upload_archive
    from uae_ray.watch import WatchSettings, load_pipeline, run_cycle

    archive, out = f"s3://{BUCKET}/archive", f"s3://{BUCKET}/out3"
    staged = tmp_path / "archive"
    for name in ("a1", "a2", "b1"):
        shutil.copytree(world["studies"][name].folder, staged / name)
    upload_archive(str(staged), archive, progress=False)
    lesions = tmp_path / "lesions"
    lesions.mkdir()
    (lesions / "a1.csv").write_text("name,x,y,z\nl1,%s,%s,%s\n" % LESION)  # <path below the archive>.csv
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"version: 1\nsteps:\n  track:\n    lesions: {lesions}\n")
    env = world["env"]
    settings = WatchSettings(archive, out, load_pipeline(pipeline), env["UAE_TRITON_URL"], env["UAE_RAY_ADDRESS"])
    first = run_cycle(settings)
    assert (first["studies"], first["processed"], first["paired"], first["failed"]) == (3, 3, 1, 0), first
    assert first["sent"] == 0 and first["feed_last"] == 3

    def track_of(name: str) -> dict:
        from uae_ray.storage import read_table
        from uae_ray.storage.images import scan_id_for

        sid = scan_id_for(f"{archive}/{name}", archive)
        (row,) = [t for t in read_table(f"{out}/tracks/tracks.parquet").to_pylist() if t["followup_id"] == sid]
        return row

    a2 = track_of("a2")
    assert a2["found"] and np.linalg.norm(np.subtract([a2[k] for k in "xyz"], np.add(LESION, SHIFT_A2))) < 3.0
    assert run_cycle(settings)["processed"] == 0
    shutil.copytree(world["studies"]["a3"].folder, staged / "a3")
    upload_archive(str(staged), archive, progress=False)
    third = run_cycle(settings)
    assert (third["processed"], third["paired"], third["failed"]) == (1, 1, 0), third
    a3 = track_of("a3")
    assert a3["found"] and a3["baseline_id"] == a2["followup_id"]
    np.testing.assert_allclose([a3[k] for k in "xyz"], np.add(LESION, SHIFT_A3), atol=3.0)
