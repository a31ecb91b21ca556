"""The one reader of a data folder's ``manifest.csv`` (columns ``case_id,modality,region,patient,
...,path``; one row per case). Standard library only, so the split and training code use it
without importing images."""

from __future__ import annotations

import csv
from pathlib import Path


def manifest_rows(data_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``<data_dir>/manifest.csv`` in file order; ``modality`` upper-cased and
    ``patient`` defaulting to the case id (a case without one is its own patient).

    Raises:
        FileNotFoundError: ``"<path>: manifest not found"``.
    """
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["modality"] = (r.get("modality") or "").upper()
        r["patient"] = r.get("patient") or r["case_id"]
    return rows
