"""Per-cohort manifest: which scans are done, failed or pending, with which model version.

Layout under a cohort output prefix ``<out>``:

* ``<out>/manifest.parquet``: the snapshot, schema :data:`~uae_ray.storage.schemas.MANIFEST`,
  one row per scan, written atomically by one process (the driver) with :meth:`Manifest.save`.
* ``<out>/manifest/<scan_id>.json``: per-scan records, each written atomically by the worker
  that processed the scan (:func:`write_record`), right after its output is written.

Why both: the per-scan file is one atomic PUT per scan by the only process working on that
scan, so workers never read-modify-write a shared object (no lost updates, no locks), and the
record survives a driver crash mid-job: the next run's :class:`Manifest` merges the per-scan
files and skips what is already done. The snapshot keeps loading cheap (one GET instead of
one per scan): :meth:`Manifest.save` folds the per-scan files in and, with ``compact=True``,
deletes those it folded in (each is re-read first and kept if it changed meanwhile).

Concurrency rules: one driver (single writer of the snapshot) per output prefix; any number of
workers, each writing only its own scans' record files. Workers also return their records to
the driver, which calls :meth:`Manifest.add`. Merging keeps, per scan, the record with the
latest ``updated_at`` (the per-scan file wins a tie).

Re-runs: :meth:`Manifest.done_ids` returns the scans with status ``ok`` *and* the same model
version; everything else (errors, pending, other versions, unknown scans) is processed again.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from uae_ray.storage.objects import (
    delete,
    exists,
    list_uris,
    read_bytes,
    write_bytes_atomic,
)
from uae_ray.storage.parquet import read_table, write_table_atomic
from uae_ray.storage.schemas import MANIFEST, STATUS_OK, STATUSES
from uae_ray.storage.uri import as_str, basename, join

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = "manifest.parquet"
RECORDS_DIR = "manifest"
RECORD_SUFFIX = ".json"
MAX_ERROR_CHARS = 2000
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def _now() -> datetime:
    return datetime.now(UTC)


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


@dataclass(frozen=True)
class ManifestRecord:
    """The state of one scan in a cohort job (one MANIFEST row).

    Attributes:
        scan_id: Scan id (see :func:`uae_ray.storage.images.scan_id_for`).
        uri: Input scan URI.
        status: ``"ok"``, ``"error"`` or ``"pending"``.
        error: One-line error message (status error), else None.
        model_version: Model version the scan was processed with.
        output_uri: Result URI for this scan.
        n_bytes: Bytes written for this scan.
        seconds: Wall time spent on this scan.
        updated_at: When the record was made (UTC, microseconds).
    """

    scan_id: str
    uri: str
    status: str
    error: str | None = None
    model_version: str | None = None
    output_uri: str | None = None
    n_bytes: int | None = None
    seconds: float | None = None
    updated_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not _SAFE_ID.match(self.scan_id):
            raise ValueError(f"scan_id {self.scan_id!r} is not a safe file name")
        if self.updated_at.tzinfo is None:
            raise ValueError("updated_at must be timezone-aware (UTC)")
        object.__setattr__(self, "error", _one_line(self.error))
        object.__setattr__(self, "updated_at", self.updated_at.astimezone(UTC))

    def to_json(self) -> str:
        """JSON text of the record (``updated_at`` as ISO 8601)."""
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRecord:
        """Build from a dict (JSON or Arrow row); ``updated_at`` may be a string or datetime."""
        data = dict(data)
        ts = data.get("updated_at")
        if isinstance(ts, str):
            data["updated_at"] = datetime.fromisoformat(ts)
        elif ts is None:
            data.pop("updated_at", None)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def record_uri(out_uri: str | os.PathLike[str], scan_id: str) -> str:
    """URI of the per-scan record file ``<out>/manifest/<scan_id>.json``."""
    return join(out_uri, RECORDS_DIR, scan_id + RECORD_SUFFIX)


def write_record(out_uri: str | os.PathLike[str], record: ManifestRecord) -> str:
    """Write one scan's record atomically (worker side). Returns the record's URI."""
    uri = record_uri(out_uri, record.scan_id)
    write_bytes_atomic(uri, record.to_json().encode("utf-8"))
    return uri


class Manifest:
    """The manifest of a cohort output prefix (see the module docstring).

    Args:
        uri: Cohort output folder or ``s3://bucket/prefix``.
        load: Read the snapshot and per-scan records now (empty if absent).
    """

    def __init__(self, uri: str | os.PathLike[str], load: bool = True) -> None:
        self.uri = as_str(uri)
        self.snapshot_uri = join(self.uri, SNAPSHOT_NAME)
        self._records: dict[str, ManifestRecord] = {}
        self._loaded_files: dict[str, ManifestRecord] = {}  # record file URI -> its record
        if load:
            self.load()

    # -- loading / merging

    def load(self) -> Manifest:
        """(Re)read the snapshot, then merge the per-scan record files. Returns self."""
        self._records.clear()
        self._loaded_files.clear()
        if exists(self.snapshot_uri):
            for row in read_table(self.snapshot_uri).to_pylist():
                self._merge(ManifestRecord.from_dict(row), prefer_new_on_tie=False)
        for uri in list_uris(join(self.uri, RECORDS_DIR), suffixes=RECORD_SUFFIX, recursive=False):
            try:
                rec = ManifestRecord.from_dict(json.loads(read_bytes(uri)))
            except FileNotFoundError:
                continue  # compacted by another save() meanwhile
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("%s: unreadable manifest record skipped: %s", uri, exc)
                continue
            if basename(uri) != rec.scan_id + RECORD_SUFFIX:
                logger.warning("%s: record of scan %s in the wrong file; skipped", uri, rec.scan_id)
                continue
            self._loaded_files[uri] = rec
            self._merge(rec, prefer_new_on_tie=True)
        logger.debug("%s: manifest of %d scans (%d record files)", self.uri, len(self._records),
                     len(self._loaded_files))
        return self

    def _merge(self, rec: ManifestRecord, prefer_new_on_tie: bool) -> bool:
        old = self._records.get(rec.scan_id)
        if old is None or rec.updated_at > old.updated_at or (
            prefer_new_on_tie and rec.updated_at == old.updated_at
        ):
            self._records[rec.scan_id] = rec
            return True
        return False

    def add(self, record: ManifestRecord) -> bool:
        """Merge a record (e.g. returned by a worker); True if it became the current one."""
        return self._merge(record, prefer_new_on_tie=True)

    def record(
        self,
        scan_id: str,
        uri: str,
        status: str,
        error: str | None = None,
        model_version: str | None = None,
        output_uri: str | None = None,
        n_bytes: int | None = None,
        seconds: float | None = None,
        *,
        persist: bool = False,
    ) -> ManifestRecord:
        """Make a record stamped now and make it current for ``scan_id``.

        Args:
            persist: Also write the per-scan record file now (what a worker does).

        Returns:
            The record.
        """
        rec = ManifestRecord(scan_id, uri, status, error, model_version, output_uri,
                             None if n_bytes is None else int(n_bytes),
                             None if seconds is None else float(seconds))
        self._records[scan_id] = rec
        if persist:
            write_record(self.uri, rec)
        return rec

    # -- queries

    def get(self, scan_id: str) -> ManifestRecord | None:
        """The current record of a scan, or None."""
        return self._records.get(scan_id)

    def status(self, scan_id: str) -> str | None:
        """``"ok"``, ``"error"``, ``"pending"``, or None for a scan never recorded."""
        rec = self._records.get(scan_id)
        return rec.status if rec else None

    def done_ids(self, model_version: str) -> set[str]:
        """Scans to skip on a re-run: status ok and processed with ``model_version``."""
        return {
            r.scan_id for r in self._records.values()
            if r.status == STATUS_OK and r.model_version == model_version
        }

    def records(self) -> list[ManifestRecord]:
        """All current records, sorted by scan id."""
        return [self._records[k] for k in sorted(self._records)]

    def counts(self) -> dict[str, int]:
        """``{status: number of scans}``."""
        return dict(Counter(r.status for r in self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, scan_id: object) -> bool:
        return scan_id in self._records

    def to_table(self) -> pa.Table:
        """The current records as a MANIFEST table (sorted by scan id)."""
        rows = [asdict(r) for r in self.records()]
        return pa.Table.from_pylist(rows, schema=MANIFEST)

    # -- saving

    def save(self, compact: bool = True) -> int:
        """Write the snapshot atomically (driver only), then optionally compact record files.

        Args:
            compact: Delete the per-scan record files loaded earlier whose record is in the
                snapshot just written (each re-read first; kept if it changed meanwhile).

        Returns:
            Bytes of the snapshot.
        """
        n = write_table_atomic(self.to_table(), self.snapshot_uri)
        if compact:
            self._compact()
        logger.info("%s: saved manifest (%s)", self.uri, self.counts())
        return n

    def _compact(self) -> None:
        removed = 0
        for uri, rec in list(self._loaded_files.items()):
            current = self._records.get(rec.scan_id)
            if current is None or current.updated_at < rec.updated_at:
                continue
            try:
                on_disk = ManifestRecord.from_dict(json.loads(read_bytes(uri)))
            except FileNotFoundError:
                self._loaded_files.pop(uri, None)
                continue
            except (ValueError, TypeError, KeyError):
                continue
            if on_disk == rec:
                delete(uri)
                removed += 1
                self._loaded_files.pop(uri, None)
        if removed:
            logger.debug("%s: compacted %d record files into the snapshot", self.uri, removed)

    def pending(self, scan_ids: Iterable[str], model_version: str) -> list[str]:
        """Of ``scan_ids`` (order kept), those not done with ``model_version``."""
        done = self.done_ids(model_version)
        return [s for s in scan_ids if s not in done]


__all__ = ["Manifest", "ManifestRecord", "record_uri", "write_record"]
