"""3D Slicer markups (.mrk.json) read in LPS and RAS and written as point lists, round trip."""

import json

import numpy as np
import pytest

from uae_ray.tasks.markups import MarkupsError, PointGroup, markups_json, markups_path, parse_markups
from uae_ray.tasks.points_io import parse_lesions_csv, parse_points


def _doc(system: str, points: list[tuple[str, list[float]]]) -> str:
    cps = [{"label": n, "position": p} for n, p in points]
    return json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": system, "controlPoints": cps}]})


def test_ras_file_becomes_lps() -> None:
    pts = parse_points(_doc("RAS", [("a", [10.0, -20.0, 30.0])]), "p.mrk.json")
    assert pts.names == ("a",) and pts.xyz.tolist() == [[-10.0, 20.0, 30.0]]
    assert parse_points(_doc("LPS", [("a", [10.0, -20.0, 30.0])]), "p.mrk.json").xyz.tolist() == [[10.0, -20.0, 30.0]]


def test_lesions_from_markups_have_no_radius() -> None:
    les = parse_lesions_csv(_doc("LPS", [("gtv", [1.0, 2.0, 3.0])]), "l.mrk.json")
    assert les.names == ("gtv",) and np.isnan(les.radius_mm).all()


@pytest.mark.parametrize("text, cause", [
    ("{not json", "not a JSON markups file"),
    ('{"markups": []}', "no markups point list"),
    (_doc("LPS", [("a", [1.0, 2.0])]), "no finite 3D position"),
    (_doc("XYZ", [("a", [1.0, 2.0, 3.0])]), "unknown coordinateSystem"),
    (_doc("LPS", [("a", [1.0, 2.0, 3.0]), ("a", [4.0, 5.0, 6.0])]), "repeats"),
])
def test_bad_markups_are_one_line_naming_the_file(text: str, cause: str) -> None:
    with pytest.raises(MarkupsError) as e:
        parse_markups(text, "bad.mrk.json")
    assert str(e.value).startswith("bad.mrk.json: ") and cause in str(e.value) and "\n" not in str(e.value)


def test_written_point_lists_round_trip_and_keep_found_and_score() -> None:
    xyz = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [np.nan] * 3])
    doc = json.loads(markups_json([PointGroup("scan1", ("a", "b", "lost"), xyz, [0.9, 0.4, np.nan], [True, False, False])]))
    (m,) = doc["markups"]
    assert m["coordinateSystem"] == "LPS" and m["name"] == "scan1" and doc["@schema"].endswith("json#")
    assert [c["label"] for c in m["controlPoints"]] == ["a", "b"]  # a point without coordinates is left out
    assert m["controlPoints"][1]["description"] == "score=0.400 found=false" and not m["controlPoints"][1]["selected"]
    names, back = parse_markups(json.dumps(doc), "x.mrk.json")
    np.testing.assert_allclose(back, xyz[:2])
    assert names == ("a", "b")
    assert markups_path("s3://b/out/det.csv") == "s3://b/out/det.mrk.json"
