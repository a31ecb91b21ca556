"""The lesions / tracks CSV contracts: ``name,x,y,z[,radius_mm]`` in, ``name,x,y,z,score,found`` out."""

import numpy as np
import pytest

from uae_ray.tasks.points_io import (
    LesionPoints,
    PointsFileError,
    Track,
    read_lesions_csv,
    read_tracks_csv,
    write_tracks_csv,
)


def test_lesions_with_and_without_radius(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("name,x,y,z,radius_mm,comment\nnodule,1.5,-2,3,7.5,right lung\nmass,10,20,-30,,\n")
    les = read_lesions_csv(f)
    assert les.names == ("nodule", "mass")
    np.testing.assert_allclose(les.xyz, [[1.5, -2, 3], [10, 20, -30]])
    assert les.radius_mm[0] == 7.5 and np.isnan(les.radius_mm[1])
    (tmp_path / "c.csv").write_text("name,x,y,z\na,1,2,3\n")
    assert np.isnan(read_lesions_csv(tmp_path / "c.csv").radius_mm).all()  # radius_mm is optional


@pytest.mark.parametrize(
    "text, cause",
    [
        ("name,x,y\na,1,2\n", "missing column(s) z"),
        ("x,y,z\n1,2,3\n", "missing column(s) name"),
        ("name,x,y,z\na,1,two,3\n", "non-numeric coordinate"),
        ("name,x,y,z,radius_mm\na,1,2,3,big\n", "non-numeric radius_mm"),
        ("name,x,y,z,radius_mm\na,1,2,3,-4\n", "negative radius_mm"),
        ("name,x,y,z,radius_mm\na,1,2,3,inf\n", "non-finite radius_mm"),
        ("name,x,y,z\na,1,2,3\na,4,5,6\n", "repeats the name 'a'"),
        ("name,x,y,z\n,1,2,3\n", "empty name"),
        ("name,x,y,z\na,1,nan,3\n", "non-finite coordinate"),
        ("name,x,y,z,radius_mm\n", "no lesions"),
    ],
)
def test_bad_lesions_files_name_the_file_and_cause(tmp_path, text, cause):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(PointsFileError) as e:
        read_lesions_csv(f)
    msg = str(e.value)
    assert msg.startswith(str(f)) and cause in msg and "\n" not in msg


def test_missing_or_binary_lesions_file(tmp_path):
    with pytest.raises(PointsFileError, match="cannot read lesions file"):
        read_lesions_csv(tmp_path / "nope.csv")
    (tmp_path / "b.csv").write_bytes(b"\x89PNG\xff\xfe\x00")
    with pytest.raises(PointsFileError, match="not text"):
        read_lesions_csv(tmp_path / "b.csv")


def test_concat_refuses_repeated_names():
    a = LesionPoints(("x",), np.zeros((1, 3)), np.array([5.0]))
    b = LesionPoints(("y", "x"), np.ones((2, 3)), np.array([np.nan, 2.0]), (None, np.ones((4, 3))))
    with pytest.raises(PointsFileError, match="x given twice"):
        a.concat(b, "src")
    both = a.concat(LesionPoints(("y",), np.ones((1, 3)), np.array([1.0]), (np.ones((2, 3)),)))
    assert both.names == ("x", "y") and both.extent_of(0) is None and both.extent_of(1).shape == (2, 3)


def test_tracks_csv_contract_and_round_trip(tmp_path):
    tracks = [
        Track("nodule", 1.0, 2.0, 3.0, 0.81, True, 0.5, 1.5, 2.5, 7.5, 1.0, 7),
        Track("gone", 4.0, 5.0, 6.0, 0.3, False, 4.5, 5.5, 6.5),
        Track("outside", np.nan, np.nan, np.nan, np.nan, False, 900.0, 0.0, 0.0,
              error="lesion outside: centre (900.0, 0.0, 0.0) is outside the baseline image"),
    ]
    out = tmp_path / "sub" / "t.csv"
    write_tracks_csv(out, tracks)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("name,x,y,z,score,found,")  # the contract's columns first, extras after
    assert lines[1].split(",")[:6] == ["nodule", "1.0000", "2.0000", "3.0000", "0.81000", "true"]
    assert lines[2].split(",")[5] == "false" and lines[3].split(",")[1:6] == ["nan", "nan", "nan", "nan", "false"]
    back = read_tracks_csv(out)
    assert [t.name for t in back] == ["nodule", "gone", "outside"]
    assert back[0].votes == 7 and back[0].radius_mm == 7.5 and back[1].found is False
    assert back[2].error.startswith("lesion outside") and np.isnan(back[2].x)
    assert [p.name for p in out.parent.iterdir()] == ["t.csv"]  # atomic: no temporary file left
