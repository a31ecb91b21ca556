import numpy as np
import pytest

from uae_ray.tasks.points_io import (
    Detection,
    NamedPoints,
    PointsFileError,
    read_detections_csv,
    read_points_csv,
    write_detections_csv,
    write_points_csv,
)


def test_points_round_trip(tmp_path):
    pts = NamedPoints(("liver", "spleen"), np.array([[1.5, -2.25, 3.0], [10.0, 20.0, -30.125]]))
    write_points_csv(tmp_path / "p.csv", pts)
    back = read_points_csv(tmp_path / "p.csv")
    assert back.names == pts.names
    np.testing.assert_allclose(back.xyz, pts.xyz, atol=1e-4)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "name,x,y,z"


def test_extra_columns_are_allowed(tmp_path):
    (tmp_path / "p.csv").write_text("name,x,y,z,comment\na,1,2,3,hello\n")
    assert read_points_csv(tmp_path / "p.csv").names == ("a",)


@pytest.mark.parametrize(
    "text, cause",
    [
        ("name,x,y\na,1,2\n", "missing column"),
        ("name,x,y,z\na,1,two,3\n", "non-numeric"),
        ("name,x,y,z\na,1,2,3\na,4,5,6\n", "repeats the name"),
        ("name,x,y,z\n", "no points"),
        ("name,x,y,z\n,1,2,3\n", "empty name"),
        ("name,x,y,z\na,1,nan,3\n", "non-finite"),
    ],
)
def test_bad_points_files_name_the_file_and_cause(tmp_path, text, cause):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(PointsFileError) as e:
        read_points_csv(f)
    msg = str(e.value)
    assert str(f) in msg and cause in msg and "\n" not in msg


def test_missing_points_file(tmp_path):
    with pytest.raises(PointsFileError, match="cannot read"):
        read_points_csv(tmp_path / "nope.csv")


def test_detections_round_trip_and_atomic(tmp_path):
    dets = [Detection("scan.nii.gz", "liver", 1.0, 2.0, 3.0, 0.75), Detection("s2", "x", -1, -2, -3, 0.1, False)]
    out = tmp_path / "sub" / "d.csv"
    write_detections_csv(out, dets)
    lines = out.read_text().splitlines()
    assert lines[0] == "target,name,x,y,z,score,found"  # the contract's columns, then the extra one
    assert lines[2].endswith(",false")
    assert read_detections_csv(out) == dets
    assert [p.name for p in out.parent.iterdir()] == ["d.csv"]  # no temporary file left


def test_detections_without_found_column_read_as_found(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("target,name,x,y,z,score\nt,a,1,2,3,0.5\n")
    assert read_detections_csv(f) == [Detection("t", "a", 1.0, 2.0, 3.0, 0.5, True)]


@pytest.mark.parametrize("text", [
    "\ufeffname,x,y,z\na,1,2,3\n",          # Excel's UTF-8 byte-order mark
    "name, x, y, z\na, 1, 2, 3\n",          # spaces after the commas
    "Name;X;Y;Z\na;1;2;3\n",                # semicolons (European Excel), capitalised header
    "name\tx\ty\tz\n\na\t1\t2\t3\n\n",      # tabs and blank lines
])
def test_points_csv_as_users_write_it(tmp_path, text):
    f = tmp_path / "p.csv"
    f.write_text(text, encoding="utf-8")
    pts = read_points_csv(f)
    assert pts.names == ("a",) and pts.xyz.tolist() == [[1.0, 2.0, 3.0]]


def test_missing_column_lists_what_was_found(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("label,x,y,z\na,1,2,3\n")
    with pytest.raises(PointsFileError, match=r"missing column\(s\) name; expected header name,x,y,z "
                                              r"\(found columns: 'label', 'x', 'y', 'z'\)"):
        read_points_csv(f)
