"""Pairs of scans for the pairwise cohort jobs (``cohort track``: baseline -> follow-up;
``cohort register``: fixed -> moving).

Two sources:

* **a CSV** with a header row; ``first_col`` and ``second_col`` name the two scans (an image
  file, a DICOM series folder, or an s3:// URI); the other columns travel along in
  :attr:`ScanPair.columns` (e.g. ``lesions`` for tracking). Relative entries are resolved
  against ``archive`` when it is given, else against the CSV's own folder
  (:meth:`ScanPair.column_uri` applies the same rule to the other columns).
* **the archive** (no CSV): the scans of :func:`~uae_ray.storage.discover_scans` grouped by
  patient and ordered by study date, each scan paired with the next one of the same patient.
  Patient and date come from the DICOM header of a series (PatientID, StudyDate, StudyTime)
  and otherwise from a sidecar ``meta.json`` beside the image (or inside the series folder)
  with ``patient`` and ``study_date``. Scans without a patient are left out; scans without
  a date sort after the dated ones, by path. Patient ids are hashed as soon as they are read
  and never logged or written.

Ids: ``first_id`` / ``second_id`` are the scans' ids (:func:`~uae_ray.storage.scan_id_for`
when the scan lies below ``archive``, so they match the embeddings of ``cohort embed`` over
that archive; else the hash of the URI), and ``pair_id`` is the first 16 hex digits of the
SHA-256 of the two ids: stable across runs and free of patient names.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

from uae_ray.storage import ScanRef, discover_scans, exists, is_s3, join, list_uris, parent, read_bytes
from uae_ray.storage.images import SCAN_ID_HEX, patient_key
from uae_ray.storage.uri import as_str, basename, relative_to, uri_hash

logger = logging.getLogger(__name__)

META_NAME = "meta.json"


class PairsError(ValueError):
    """A pairs CSV or archive that gives no usable pairs; the message names the source."""


def scan_key(uri: str, archive: str | None) -> str:
    """The id of a scan: the archive's scan id when ``uri`` lies below ``archive``, else the
    hash of the URI as given."""
    if archive:
        try:
            rel = relative_to(uri, archive)
        except ValueError:
            rel = None
        if rel:
            return uri_hash(rel, SCAN_ID_HEX)
    return uri_hash(as_str(uri).rstrip("/"), SCAN_ID_HEX)


def pair_key(first_id: str, second_id: str) -> str:
    """The pair id of two scan ids (order matters: baseline -> follow-up)."""
    return uri_hash(f"{first_id}->{second_id}", SCAN_ID_HEX)


@dataclass(frozen=True)
class ScanPair:
    """Two scans to process together.

    Attributes:
        pair_id: 16 hex digits (see the module docstring).
        first: Baseline / fixed scan URI (resolved).
        second: Follow-up / moving scan URI (resolved).
        columns: The other columns of the CSV row, as written (empty for archive pairs).
        first_id: Scan id of ``first`` (default: hash of its URI).
        second_id: Scan id of ``second``.
        base: Folder / prefix relative entries are resolved against (``None``: none).
    """

    pair_id: str
    first: str
    second: str
    columns: dict[str, str] = field(default_factory=dict)
    first_id: str = ""
    second_id: str = ""
    base: str | None = None

    def __post_init__(self) -> None:
        if not self.first_id:
            object.__setattr__(self, "first_id", scan_key(self.first, None))
        if not self.second_id:
            object.__setattr__(self, "second_id", scan_key(self.second, None))

    @property
    def scan_id(self) -> str:
        """The pair id (what :func:`~uae_ray.cohort.runner.fan_out` and the manifests key on)."""
        return self.pair_id

    @property
    def uri(self) -> str:
        """``"<first> -> <second>"`` (for manifests and log lines)."""
        return f"{self.first} -> {self.second}"

    def column_uri(self, name: str) -> str | None:
        """The value of column ``name`` resolved like the scans (``None`` when empty or absent)."""
        value = (self.columns.get(name) or "").strip()
        return resolve_uri(value, self.base) if value else None


def resolve_uri(value: str, base: str | None) -> str:
    """``value`` as is when absolute (``/...``, ``s3://``, ``~``), else joined onto ``base``."""
    value = value.strip()
    if is_s3(value) or value.startswith(("/", "~", "file://")) or not base:
        return as_str(value)
    return join(base, value)


def _read_text(uri: str) -> str:
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise PairsError(f"{uri}: cannot read pairs file (no such file)") from None
    except OSError as e:
        raise PairsError(f"{uri}: cannot read pairs file ({e.strerror or e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PairsError(f"{uri}: pairs file is not text (UTF-8)") from e


def pairs_from_csv(pairs_csv: str, first_col: str, second_col: str, archive: str | None = None) -> list[ScanPair]:
    """The pairs of a CSV (see the module docstring).

    Raises:
        PairsError: Unreadable file, missing column, an empty cell in ``first_col`` or
            ``second_col``, a pair given twice, or no rows.
    """
    text = _read_text(pairs_csv)
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in (first_col, second_col) if c not in fields]
    if missing:
        raise PairsError(
            f"{pairs_csv}: missing column(s) {', '.join(missing)}; expected a header with {first_col},{second_col}"
        )
    base = archive or parent(pairs_csv)
    pairs: list[ScanPair] = []
    seen: dict[str, int] = {}
    for row_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        for col in (first_col, second_col):
            if not row.get(col):
                raise PairsError(f"{pairs_csv}: row {row_no} has an empty {col}")
        first, second = resolve_uri(row[first_col], base), resolve_uri(row[second_col], base)
        first_id, second_id = scan_key(first, archive), scan_key(second, archive)
        pid = pair_key(first_id, second_id)
        if pid in seen:
            raise PairsError(f"{pairs_csv}: row {row_no} repeats the pair of row {seen[pid]}")
        seen[pid] = row_no
        columns = {k: v for k, v in row.items() if k not in (first_col, second_col)}
        pairs.append(ScanPair(pid, first, second, columns, first_id, second_id, base))
    return pairs


def _dicom_info(folder: str) -> dict[str, str]:
    """PatientID, StudyDate and StudyTime of the first DICOM file of a series folder."""
    import SimpleITK as sitk

    files = sorted(u for u in list_uris(folder, recursive=False) if not basename(u).startswith("."))
    if not files:
        return {}
    tags = {"0010|0020": "patient", "0008|0020": "study_date", "0008|0030": "study_time"}
    with tempfile.TemporaryDirectory(prefix="uae-ray-dcm-") as tmp:
        local = files[0]
        if is_s3(local):
            local = os.path.join(tmp, "first.dcm")
            with open(local, "wb") as f:
                f.write(read_bytes(files[0]))
        reader = sitk.ImageFileReader()
        reader.SetFileName(local)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return {}
        keys = set(reader.GetMetaDataKeys())
        return {name: reader.GetMetaData(tag).strip() for tag, name in tags.items() if tag in keys}


def _meta_info(scan: ScanRef) -> dict[str, str]:
    """``patient`` / ``study_date`` of the sidecar meta.json of a scan (empty when absent)."""
    folder = scan.uri if scan.kind == "dicom" else parent(scan.uri)
    for uri in (join(folder, META_NAME), join(parent(scan.uri), META_NAME)):
        if not exists(uri):
            continue
        try:
            meta = json.loads(read_bytes(uri))
        except (OSError, ValueError) as e:
            logger.warning("%s: unreadable sidecar (%s)", uri, type(e).__name__)
            return {}
        return {k: str(meta[k]) for k in ("patient", "study_date", "study_time") if meta.get(k) not in (None, "")}
    return {}


def scan_info(scan: ScanRef) -> dict[str, str]:
    """Patient (raw) and study date/time of a scan: DICOM header first, then meta.json."""
    info: dict[str, str] = {}
    if scan.kind == "dicom":
        info = _dicom_info(scan.uri)
    side = _meta_info(scan)
    for key, value in side.items():
        if not info.get(key):
            info[key] = value
    return info


def pairs_from_archive(archive: str) -> list[ScanPair]:
    """Consecutive scans of each patient, by study date (see the module docstring)."""
    scans = discover_scans(archive)
    by_patient: dict[str, list[tuple[str, str, ScanRef]]] = defaultdict(list)
    no_patient = 0
    for scan in scans:
        info = scan_info(scan)
        patient = info.get("patient")
        if not patient:
            no_patient += 1
            continue
        key = patient_key(patient)  # hashed at once; the raw id goes no further
        date = (info.get("study_date") or "") + (info.get("study_time") or "")
        by_patient[key].append((date or "~", relative_to(scan.uri, archive) or scan.uri, scan))
    if no_patient:
        logger.warning("%s: %d of %d scans have no patient id (DICOM PatientID or meta.json 'patient'); left out",
                       archive, no_patient, len(scans))
    pairs: list[ScanPair] = []
    for key in sorted(by_patient):
        ordered = [s for _, _, s in sorted(by_patient[key], key=lambda t: (t[0], t[1]))]
        for a, b in zip(ordered, ordered[1:]):
            pairs.append(ScanPair(pair_key(a.scan_id, b.scan_id), a.uri, b.uri, {}, a.scan_id, b.scan_id, archive))
    logger.info("%s: %d pairs from %d patients with two or more scans", archive, len(pairs),
                sum(len(v) > 1 for v in by_patient.values()))
    return pairs


def load_pairs(
    pairs_csv: str | None, first_col: str, second_col: str, archive: str | None = None
) -> list[ScanPair]:
    """The pairs of a CSV, or (``pairs_csv=None``) the consecutive scans of each patient of
    ``archive``.

    Args:
        pairs_csv: Local path or s3:// URI of a CSV, or ``None``.
        first_col: Column of the first scan (``baseline`` for tracking, ``fixed`` for
            registration).
        second_col: Column of the second scan (``followup`` / ``moving``).
        archive: Archive root: relative CSV entries resolve against it and scan ids are
            relative to it; required without a CSV.

    Returns:
        The pairs, in CSV order or by patient hash then date.

    Raises:
        PairsError: Neither a CSV nor an archive, an unusable CSV, or no pairs at all.
    """
    if pairs_csv:
        pairs = pairs_from_csv(pairs_csv, first_col, second_col, archive)
        source = pairs_csv
    elif archive:
        pairs = pairs_from_archive(archive)
        source = archive
    else:
        raise PairsError("no pairs: give a pairs CSV or an archive")
    if not pairs:
        hint = "no rows" if pairs_csv else "no patient has two scans with a patient id (DICOM or meta.json)"
        raise PairsError(f"{source}: no pairs ({hint})")
    return pairs


__all__ = ["PairsError", "ScanPair", "load_pairs", "pair_key", "pairs_from_archive", "pairs_from_csv",
           "resolve_uri", "scan_info", "scan_key"]
