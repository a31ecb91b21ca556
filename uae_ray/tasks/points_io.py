"""CSV contracts for points and detections (see DESIGN.md, "Contracts").

points:     ``name,x,y,z``
detections: ``target,name,x,y,z,score`` plus the extra column ``found`` (``true``/``false``:
            false where the matcher abstained; the point is then its best estimate)

Coordinates are ITK/SimpleITK physical points (LPS, mm). Extra columns are allowed after the
contract columns and are ignored on reading.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def read_points_csv(path: str | Path) -> NamedPoints:
    """Reads a ``name,x,y,z`` CSV.

    Raises:
        PointsFileError: missing file or column, a non-numeric coordinate, duplicate names or
            no rows; the message names the file and the row.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PointsFileError(f"{path}: cannot read points file ({e.strerror})") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in POINT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PointsFileError(f"{path}: missing column(s) {', '.join(missing)}; expected header name,x,y,z")
    names: list[str] = []
    coords: list[tuple[float, float, float]] = []
    for row_no, row in enumerate(reader, start=2):
        name = (row["name"] or "").strip()
        if not name:
            raise PointsFileError(f"{path}: row {row_no} has an empty name")
        if name in names:
            raise PointsFileError(f"{path}: row {row_no} repeats the name {name!r}")
        try:
            xyz = tuple(float(row[c]) for c in ("x", "y", "z"))
        except (TypeError, ValueError) as e:
            raise PointsFileError(f"{path}: row {row_no} ({name}) has a non-numeric coordinate") from e
        if not all(np.isfinite(xyz)):
            raise PointsFileError(f"{path}: row {row_no} ({name}) has a non-finite coordinate")
        names.append(name)
        coords.append(xyz)  # type: ignore[arg-type]
    if not names:
        raise PointsFileError(f"{path}: no points (header only)")
    return NamedPoints(tuple(names), np.asarray(coords, dtype=np.float64))


def write_csv_atomic(path: str | Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    """Writes a CSV to a temporary file beside ``path`` and renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
