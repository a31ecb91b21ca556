"""The pieces of ``uae-ray watch`` that need no service: the pipeline YAML (the documented
example loads; every kind of mistake is one error line naming the file and the key path), the
cursor (atomic, bound to its source), longitudinal pairing and the series index."""

from __future__ import annotations

from pathlib import Path

import pytest

from uae_ray.stack.config import REPO_ROOT
from uae_ray.watch import PipelineError, load_pipeline, parse_duration
from uae_ray.watch.pipeline import pipeline_from_dict


def test_the_documented_example_loads_with_every_step() -> None:
    p = load_pipeline(REPO_ROOT / "jobs" / "watch_pipeline.yaml")
    assert p.steps == ("embed", "landmarks:headneck", "prelabel", "track", "register")
    assert p.modalities == ("CT",) and p.min_slices == 32 and p.every_s == 600.0
    assert p.prelabel.organs.split(",")[0] == "brainstem" and len(p.prelabel.supports) == 2
    assert p.pairs and p.send_seg and p.send_sr


def test_defaults_of_a_minimal_pipeline() -> None:
    p = pipeline_from_dict({"version": 1})
    assert p.steps == ("embed",) and not p.pairs and p.modalities == ("CT", "MR") and p.every_s is None
    assert pipeline_from_dict({"version": 1, "steps": {"track": None, "register": True}}).pairs


@pytest.mark.parametrize("data, where", [
    ({}, "version is required"),
    ({"version": 2}, "version: this uae-ray reads version 1"),
    ({"version": 1, "stpes": {}}, "unknown key stpes"),
    ({"version": 1, "steps": {"landmarks": [{"name": "hn", "template": "t.nii.gz"}]}}, "steps.landmarks[0].points is required"),
    ({"version": 1, "steps": {"landmarks": [{"name": "Head Neck", "template": "t", "points": "p"}]}}, "must match [a-z0-9_-]+"),
    ({"version": 1, "steps": {"landmarks": [{"name": "a", "template": "t", "points": "p"}] * 2}}, "'a' is used twice"),
    ({"version": 1, "steps": {"prelabel": {"supports": ["img.nii.gz"], "organs": "liver"}}}, "IMAGE:LABELS"),
    ({"version": 1, "steps": {"prelabel": {"supports": ["a:b"], "organs": "liver", "boxes": "tight"}}}, "expected spl or wpl"),
    ({"version": 1, "steps": {"register": {"kind": "bspline"}}}, "steps.register.kind: expected one of"),
    ({"version": 1, "steps": {"embed": False}}, "cannot be turned off"),
    ({"version": 1, "series": {"min_slices": "many"}}, "series.min_slices: expected int"),
    ({"version": 1, "model": {"storage_tier": "tiny"}}, "unknown tier 'tiny'"),
    ({"version": 1, "send_back": {"seg": "yes"}}, "send_back.seg: expected bool"),
    ({"version": 1, "schedule": {"every": "soon"}}, "schedule.every: expected a positive duration"),
    (["version", 1], "the file must be a mapping"),
])
def test_each_mistake_is_one_line_naming_the_file_and_key(data, where: str) -> None:
    with pytest.raises(PipelineError) as err:
        pipeline_from_dict(data, "jobs/p.yaml")
    message = str(err.value)
    assert message.startswith("jobs/p.yaml: ") and where in message and "\n" not in message, message


def test_unreadable_and_unparsable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="missing.yaml: cannot read the pipeline file"):
        load_pipeline(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsteps: [unclosed\n")
    with pytest.raises(PipelineError, match=r"bad.yaml: not valid YAML at line \d"):
        load_pipeline(bad)


def test_durations() -> None:
    assert parse_duration("10m") == 600 and parse_duration("30s") == 30 and parse_duration(2) == 2
    assert parse_duration("1.5h") == 5400
    for bad in ("0m", "-1s", "10 minutes", ""):
        with pytest.raises(PipelineError):
            parse_duration(bad, "--every")


def test_the_cursor_is_written_atomically_and_refuses_another_source(tmp_path: Path) -> None:
    from uae_ray.watch.cursor import CursorError, read_cursor, write_cursor

    out = str(tmp_path / "out")
    fresh = read_cursor(out, "http://pacs/dicom-web", "orthanc-changes")
    assert fresh.position == 0 and fresh.cycle == 0
    write_cursor(out, fresh, 41)
    again = read_cursor(out, "http://pacs/dicom-web", "orthanc-changes")
    assert again.position == 41 and again.cycle == 1
    assert [p.name for p in (tmp_path / "out" / "watch").iterdir()] == ["cursor.json"]  # no temporary left
    with pytest.raises(CursorError, match="http://other"):
        read_cursor(out, "http://other/dicom-web", "orthanc-changes")


def test_prior_is_the_most_recent_earlier_study_of_the_same_hashed_patient() -> None:
    from uae_ray.watch.index import prior_of

    def meta(key: str, patient: str | None, date: str | None) -> dict:
        return {"study_key": key, "series_key": f"s{key}", "patient": patient, "study_date": date, "study_time": "1000"}

    index = {m["series_key"]: m for m in (meta("a1", "p1", "20240101"), meta("a2", "p1", "20250101"),
                                           meta("b1", "p2", "20240601"), meta("a4", "p1", "20270101"))}
    new = meta("a3", "p1", "20260101")
    assert prior_of(new, index)["study_key"] == "a2"  # not the later a4, not patient p2
    assert prior_of(meta("a0", "p1", "20230101"), index) is None  # the patient's first study
    assert prior_of(meta("x", None, "20260101"), index) is None  # no patient id: never paired
    assert prior_of(meta("y", "p1", None), index) is None  # no date: never paired


def test_the_index_is_rebuilt_from_the_stored_series_only(tmp_path: Path) -> None:
    import json

    from uae_ray.watch.index import rebuild_index
    from uae_ray.watch.materialize import IMAGE_NAME, META_NAME, series_root

    out = str(tmp_path)
    for key, with_image in (("k1", True), ("k2", False)):  # k2: killed between meta.json and image
        folder = Path(series_root(out)) / key
        folder.mkdir(parents=True)
        (folder / META_NAME).write_text(json.dumps({"series_key": key, "study_key": key}))
        if with_image:
            (folder / IMAGE_NAME).write_bytes(b"x")
    assert list(rebuild_index(out)) == ["k1"]
