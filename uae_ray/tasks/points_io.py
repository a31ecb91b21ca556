"""CSV contracts for points and detections (see DESIGN.md, "Contracts").

points:     ``name,x,y,z``
detections: ``target,name,x,y,z,score`` plus the extra column ``found`` (``true``/``false``:
            false where the matcher abstained; the point is then its best estimate)
lesions:    ``name,x,y,z[,radius_mm]`` (an empty ``radius_mm`` cell: no extent given)
tracks:     ``name,x,y,z,score,found`` plus the extra columns ``baseline_x, baseline_y,
            baseline_z, radius_mm, consistency, votes, error`` (a lesion that could not be
            tracked has ``nan`` coordinates and score, ``found=false`` and its ``error``)

Coordinates are ITK/SimpleITK physical points (LPS, mm). Extra columns are allowed after the
contract columns and are ignored on reading.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uae_ray.atomic import atomic_path
from uae_ray.tasks.markups import MarkupsError, parse_markups

POINT_COLUMNS = ("name", "x", "y", "z")
DETECTION_COLUMNS = ("target", "name", "x", "y", "z", "score")
DETECTION_EXTRA_COLUMNS = ("found",)


class PointsFileError(ValueError):
    """A points CSV that does not follow the contract; the message names the file."""


@dataclass(frozen=True)
class NamedPoints:
    """Named world points.

    Attributes:
        names: one name per point.
        xyz: (N, 3) float64 world coordinates, x, y, z order (LPS, mm).
    """

    names: tuple[str, ...]
    xyz: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Detection:
    """One detected point in a target scan (``found=False``: the matcher abstained)."""

    target: str
    name: str
    x: float
    y: float
    z: float
    score: float
    found: bool = True


def _read_text(path: str | Path, kind: str) -> str:
    """The text of a points / lesions file (a UTF-8 byte-order mark is dropped)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise PointsFileError(f"{path}: cannot read {kind} file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise PointsFileError(f"{path}: {kind} file is not text (UTF-8)") from e


def table_rows(text: str, source: str, required: tuple[str, ...], expected: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(row number, row)`` pairs of a small CSV as users write it.

    Accepts a byte-order mark, ``,`` ``;`` or tab as the delimiter (sniffed from the header),
    spaces around names and values, and header names in any case; blank lines are skipped.

    Raises:
        PointsFileError: a required column is missing; the message lists the columns found.
    """
    text = text.lstrip("\ufeff")
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(",;\t", key=first.count) if first else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    rows = [(n, r) for n, r in enumerate(reader, start=1) if any(c.strip() for c in r)]
    header = [h.strip().lower() for h in rows[0][1]] if rows else []
    missing = [c for c in required if c not in header]
    if missing:
        found = ", ".join(repr(h) for h in header) or "none"
        raise PointsFileError(f"{source}: missing column(s) {', '.join(missing)}; expected header {expected} "
                              f"(found columns: {found})")
    return header, [(n, {h: c.strip() for h, c in zip(header, r)}) for n, r in rows[1:]]


def _named_xyz(rows: list[tuple[int, dict]], source: str) -> tuple[list[str], np.ndarray]:
    """Names and (N, 3) coordinates of ``name,x,y,z`` rows (one home for the checks)."""
    names: list[str] = []
    coords: list[tuple[float, ...]] = []
    for row_no, row in rows:
        name = row.get("name") or ""
        if not name:
            raise PointsFileError(f"{source}: row {row_no} has an empty name")
        if name in names:
            raise PointsFileError(f"{source}: row {row_no} repeats the name {name!r}")
        try:
            xyz = tuple(float(row[c]) for c in ("x", "y", "z"))
        except (KeyError, TypeError, ValueError) as e:
            raise PointsFileError(f"{source}: row {row_no} ({name}) has a non-numeric coordinate") from e
        if not all(np.isfinite(xyz)):
            raise PointsFileError(f"{source}: row {row_no} ({name}) has a non-finite coordinate")
        names.append(name)
        coords.append(xyz)
    return names, np.asarray(coords, dtype=np.float64).reshape(-1, 3)


def parse_points(text: str, source: str) -> NamedPoints:
    """Points from the text of a ``name,x,y,z`` CSV or, for a ``.json`` source, a 3D Slicer
    markups file (:func:`~uae_ray.tasks.markups.parse_markups`; RAS converted to LPS)."""
    if source.lower().endswith(".json"):
        try:
            names, xyz = parse_markups(text, source)
        except MarkupsError as e:
            raise PointsFileError(str(e)) from None
        return NamedPoints(names, xyz)
    _, rows = table_rows(text, source, POINT_COLUMNS, "name,x,y,z")
    names, xyz = _named_xyz(rows, source)
    if not names:
        raise PointsFileError(f"{source}: no points (header only)")
    return NamedPoints(tuple(names), xyz)


def read_points_csv(path: str | Path) -> NamedPoints:
    """Reads a ``name,x,y,z`` CSV (or a Slicer ``.mrk.json``), world LPS mm.

    Raises:
        PointsFileError: missing file or column, a non-numeric coordinate, duplicate names or
            no rows; the message names the file and the row.
    """
    return parse_points(_read_text(path, "points"), str(path))


def write_csv_atomic(path: str | Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    """Writes a CSV to a temporary file beside ``path`` and renames it into place."""
    with atomic_path(path, ".tmp") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_points_csv(path: str | Path, points: NamedPoints) -> None:
    """Writes a ``name,x,y,z`` CSV atomically."""
    rows = [(n, *(f"{v:.4f}" for v in p)) for n, p in zip(points.names, points.xyz)]
    write_csv_atomic(path, POINT_COLUMNS, rows)


def write_detections_csv(path: str | Path, detections: list[Detection]) -> None:
    """Writes a ``target,name,x,y,z,score,found`` CSV atomically."""
    rows = [
        (d.target, d.name, f"{d.x:.4f}", f"{d.y:.4f}", f"{d.z:.4f}", f"{d.score:.5f}", str(d.found).lower())
        for d in detections
    ]
    write_csv_atomic(path, DETECTION_COLUMNS + DETECTION_EXTRA_COLUMNS, rows)


def read_detections_csv(path: str | Path) -> list[Detection]:
    """Reads a detections CSV written by :func:`write_detections_csv` (``found`` defaults to true)."""
    with open(path, newline="") as f:
        return [
            Detection(
                r["target"], r["name"], float(r["x"]), float(r["y"]), float(r["z"]), float(r["score"]),
                (r.get("found") or "true").strip().lower() != "false",
            )
            for r in csv.DictReader(f)
        ]


# --------------------------------------------------------------------------- lesions and tracks

LESION_COLUMNS = ("name", "x", "y", "z")
LESION_OPTIONAL_COLUMNS = ("radius_mm",)
TRACK_COLUMNS = ("name", "x", "y", "z", "score", "found")
TRACK_EXTRA_COLUMNS = ("baseline_x", "baseline_y", "baseline_z", "radius_mm", "consistency", "votes", "error")


@dataclass(frozen=True)
class LesionPoints:
    """Named lesions on a baseline scan.

    Attributes:
        names: one name per lesion.
        xyz: (N, 3) float64 world centres, x, y, z order (LPS, mm).
        radius_mm: (N,) float64 radius of each lesion in mm; NaN where none was given.
        extent: optional per-lesion (K_i, 3) world points inside the lesion (from a mask),
            ``None`` for lesions given by centre (and radius) only.
    """

    names: tuple[str, ...]
    xyz: np.ndarray
    radius_mm: np.ndarray
    extent: tuple[np.ndarray | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def extent_of(self, i: int) -> np.ndarray | None:
        """The mask points of lesion ``i`` (or None)."""
        return None if self.extent is None else self.extent[i]

    def concat(self, other: LesionPoints, source: str = "lesions") -> LesionPoints:
        """Both sets in one (``other`` after ``self``).

        Raises:
            PointsFileError: a name appears in both sets.
        """
        clash = sorted(set(self.names) & set(other.names))
        if clash:
            raise PointsFileError(f"{source}: lesion name(s) {', '.join(clash)} given twice")
        ext = tuple(self.extent_of(i) for i in range(len(self))) + tuple(other.extent_of(i) for i in range(len(other)))
        return LesionPoints(
            self.names + other.names,
            np.concatenate([self.xyz.reshape(-1, 3), other.xyz.reshape(-1, 3)]),
            np.concatenate([self.radius_mm, other.radius_mm]),
            ext if any(e is not None for e in ext) else None,
        )


@dataclass(frozen=True)
class Track:
    """One lesion tracked from the baseline into the follow-up.

    ``found=False``: the matcher abstained (x, y, z are its best estimate) or, with ``error``
    set, the lesion could not be tracked at all (x, y, z and score are NaN).
    """

    name: str
    x: float
    y: float
    z: float
    score: float
    found: bool
    baseline_x: float
    baseline_y: float
    baseline_z: float
    radius_mm: float = float("nan")
    consistency: float = float("nan")
    votes: int = 0
    error: str | None = None

    @property
    def xyz(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])

    @property
    def baseline_xyz(self) -> np.ndarray:
        return np.array([self.baseline_x, self.baseline_y, self.baseline_z])


def parse_lesions_csv(text: str, source: str) -> LesionPoints:
    """Parses the text of a ``name,x,y,z[,radius_mm]`` CSV (see :func:`read_lesions_csv`); a
    ``.json`` source is a Slicer markups file (no radii)."""
    if source.lower().endswith(".json"):
        points = parse_points(text, source)
        return LesionPoints(points.names, points.xyz, np.full(len(points), np.nan))
    header, rows = table_rows(text, source, LESION_COLUMNS, "name,x,y,z[,radius_mm]")
    names, xyz = _named_xyz(rows, source)
    radii: list[float] = []
    for (row_no, row), name in zip(rows, names):
        radius = float("nan")
        cell = row.get("radius_mm") or ""
        if cell:
            try:
                radius = float(cell)
            except ValueError as e:
                raise PointsFileError(f"{source}: row {row_no} ({name}) has a non-numeric radius_mm {cell!r}") from e
            if not np.isfinite(radius):
                raise PointsFileError(f"{source}: row {row_no} ({name}) has a non-finite radius_mm")
            if radius < 0:
                raise PointsFileError(f"{source}: row {row_no} ({name}) has a negative radius_mm ({cell})")
        radii.append(radius)
    if not names:
        raise PointsFileError(f"{source}: no lesions (header only)")
    return LesionPoints(tuple(names), xyz, np.asarray(radii, dtype=np.float64))


def read_lesions_csv(path: str | Path) -> LesionPoints:
    """Reads a ``name,x,y,z[,radius_mm]`` CSV (world LPS mm; radius in mm, optional per row) or a
    Slicer ``.mrk.json``.

    Raises:
        PointsFileError: missing file or column, a non-numeric or non-finite coordinate or
            radius, a negative radius, duplicate or empty names, or no rows; one line that
            names the file and the row.
    """
    return parse_lesions_csv(_read_text(path, "lesions"), str(path))


def _fmt(v: float, digits: int) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.{digits}f}"


def write_tracks_csv(path: str | Path, tracks: list[Track]) -> None:
    """Writes a ``name,x,y,z,score,found`` CSV (plus :data:`TRACK_EXTRA_COLUMNS`) atomically."""
    rows = [
        (
            t.name, _fmt(t.x, 4), _fmt(t.y, 4), _fmt(t.z, 4), _fmt(t.score, 5), str(bool(t.found)).lower(),
            _fmt(t.baseline_x, 4), _fmt(t.baseline_y, 4), _fmt(t.baseline_z, 4),
            "" if not np.isfinite(t.radius_mm) else f"{t.radius_mm:.3f}",
            "" if not np.isfinite(t.consistency) else f"{t.consistency:.3f}",
            str(int(t.votes)), t.error or "",
        )
        for t in tracks
    ]
    write_csv_atomic(path, TRACK_COLUMNS + TRACK_EXTRA_COLUMNS, rows)


def read_tracks_csv(path: str | Path) -> list[Track]:
    """Reads a tracks CSV written by :func:`write_tracks_csv` (extra columns optional)."""

    def num(r: dict, key: str) -> float:
        cell = (r.get(key) or "").strip()
        return float(cell) if cell else float("nan")

    with open(path, newline="") as f:
        return [
            Track(
                r["name"], float(r["x"]), float(r["y"]), float(r["z"]), float(r["score"]),
                (r.get("found") or "true").strip().lower() != "false",
                num(r, "baseline_x"), num(r, "baseline_y"), num(r, "baseline_z"), num(r, "radius_mm"),
                num(r, "consistency"), int(r.get("votes") or 0), (r.get("error") or None),
            )
            for r in csv.DictReader(f)
        ]
