"""3D Slicer markups files (``.mrk.json``) in and out: named points as Slicer's point lists.

Reading takes every control point of every point list (``"type": "Fiducial"``) and converts
``"coordinateSystem": "RAS"`` to LPS (x and y negated), so a file saved by Slicer, in either
system, gives the same world points as the ``name,x,y,z`` CSV contract (LPS mm). Writing makes
one point list per group (e.g. one per target scan) in LPS, with the score and the found flag in
each point's description; Slicer shows unconfirmed points (``found=false``) unselected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np



class MarkupsError(ValueError):
    """A markups file that cannot be used; one line naming it (the points readers re-raise it as
    their :class:`~uae_ray.tasks.points_io.PointsFileError`)."""

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def parse_markups(text: str, source: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and (N, 3) LPS points of the point lists of a markups JSON text.

    Raises:
        MarkupsError: not JSON, no point list, a point without a 3-vector position, an
            unknown coordinate system, or repeated labels (one line naming ``source``).
    """
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise MarkupsError(f"{source}: not a JSON markups file ({e.msg} at line {e.lineno})") from None
    lists = [m for m in (doc.get("markups") or []) if isinstance(m, dict) and m.get("type", "Fiducial") == "Fiducial"] \
        if isinstance(doc, dict) else []
    if not lists:
        raise MarkupsError(f"{source}: no markups point list (expected {{\"markups\": [{{\"type\": \"Fiducial\", "
                              "\"controlPoints\": [...]}}]}})")
    names: list[str] = []
    coords: list[np.ndarray] = []
    for m in lists:
        system = str(m.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise MarkupsError(f"{source}: unknown coordinateSystem {system!r} (LPS or RAS)")
        for k, cp in enumerate(m.get("controlPoints") or [], start=1):
            name = str(cp.get("label") or "").strip() or f"{m.get('name') or 'F'}-{k}"
            pos = np.asarray(cp.get("position", []), dtype=np.float64).reshape(-1)
            if pos.shape != (3,) or not np.all(np.isfinite(pos)):
                raise MarkupsError(f"{source}: control point {name!r} has no finite 3D position")
            if name in names:
                raise MarkupsError(f"{source}: control point label {name!r} repeats")
            names.append(name)
            coords.append(pos * _RAS_TO_LPS if system == "RAS" else pos)
    if not names:
        raise MarkupsError(f"{source}: no control points")
    return tuple(names), np.asarray(coords, dtype=np.float64)


@dataclass
class PointGroup:
    """One point list to write: its name, point names, (N, 3) LPS points and per-point score /
    found (optional)."""

    name: str
    names: tuple[str, ...]
    xyz: np.ndarray
    scores: list[float] = field(default_factory=list)
    found: list[bool] = field(default_factory=list)


def markups_json(groups: list[PointGroup]) -> str:
    """A markups JSON document with one point list per group (LPS; NaN points left out)."""
    markups = []
    for g in groups:
        cps = []
        for i, (name, xyz) in enumerate(zip(g.names, g.xyz)):
            if not np.all(np.isfinite(xyz)):
                continue
            found = g.found[i] if i < len(g.found) else True
            desc = (f"score={g.scores[i]:.3f} " if i < len(g.scores) and np.isfinite(g.scores[i]) else "") + \
                f"found={str(bool(found)).lower()}"
            cps.append({"id": str(i + 1), "label": name, "description": desc, "position": [float(v) for v in xyz],
                        "selected": bool(found), "locked": True, "visibility": True, "positionStatus": "defined"})
        markups.append({"type": "Fiducial", "name": g.name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
                        "locked": True, "controlPoints": cps})
    return json.dumps({"@schema": SCHEMA, "markups": markups}, indent=2) + "\n"


def markups_path(csv_path: str) -> str:
    """The markups file written beside a CSV output: ``x.csv`` -> ``x.mrk.json``."""
    return (csv_path[:-4] if csv_path.lower().endswith(".csv") else csv_path) + ".mrk.json"
