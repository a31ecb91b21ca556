"""The skeleton every pair job (``cohort track``, ``cohort register``) is written on.

One loop: pairs -> embed the scans that have no stored embeddings (the ``cohort embed`` tasks)
-> pairs not yet ``ok`` for this version -> one Ray task per pair (the task writes its part
``<out>/<table>/parts/<pair_id>.parquet`` and returns its manifest record) -> manifest saved ->
the parts of the pairs that are ``ok`` gathered in one Arrow dataset read -> one table
``<out>/<table>/<table>.parquet``. A job supplies only what differs: the task, the version
string of a pair's result, the table schema and the column names of its pairs CSV.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from uae_ray.cohort.embed import add_record
from uae_ray.cohort.pair_embeddings import embed_missing
from uae_ray.cohort.pairs import ScanPair
from uae_ray.cohort.runner import fan_out, init_ray, one_line
from uae_ray.storage import Manifest, join, read_files, write_table_atomic
from uae_ray.storage.schemas import STATUS_OK

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairJob:
    """What one pair job is.

    Attributes:
        label: Its name in logs and progress lines (``"cohort track"``).
        table: Folder and file stem of its output table under ``out`` (``"tracks"``).
        schema: The Arrow schema of the table (rows carry ``pair_id``).
        roles: Names of the two scans of a pair in messages (``("baseline", "follow-up")``).
        task: ``(pair, settings) -> manifest record``, run as a Ray task; it catches its own
            errors (``status="error"`` with a one-line ``error``) and writes its part.
        version: ``(settings, pair) -> str``: what a finished pair's record must carry to count
            as done for these settings (model, method, inputs); may raise ``ValueError``.
        check: ``pair -> None`` run on the driver before anything is embedded; a ``ValueError``
            (one line naming the input) makes the pair an ``error`` record that costs no embedding.
    """

    label: str
    table: str
    schema: pa.Schema
    roles: tuple[str, str]
    task: Callable[[ScanPair, Any], dict[str, Any]]
    version: Callable[[Any, ScanPair], str]
    check: Callable[[ScanPair], None] | None = None

    def part_uri(self, out: str, pair_id: str) -> str:
        """Where the task of ``pair_id`` writes its rows."""
        return join(out, self.table, "parts", f"{pair_id}.parquet")

    def table_uri(self, out: str) -> str:
        return join(out, self.table, f"{self.table}.parquet")

    def done(self, manifest: Manifest, pair: ScanPair, settings: Any) -> bool:
        """Whether the pair is ``ok`` in the manifest for these settings."""
        rec = manifest.get(pair.pair_id)
        if rec is None or rec.status != STATUS_OK:
            return False
        try:
            return rec.model_version == self.version(settings, pair)
        except ValueError:
            return False


def _check_pairs(job: PairJob, pairs: list[ScanPair]) -> tuple[list[ScanPair], list[tuple[ScanPair, str]]]:
    """``(pairs whose inputs pass job.check, [(pair, one-line error)])``."""
    if job.check is None:
        return pairs, []
    ok, bad = [], []
    for pair in pairs:
        try:
            job.check(pair)
            ok.append(pair)
        except ValueError as e:
            logger.error("%s: pair %s: %s", job.label, pair.pair_id, one_line(e))
            bad.append((pair, one_line(e)))
    return ok, bad


def run_pair_job(job: PairJob, pairs: list[ScanPair], settings: Any, manifest_uri: str, out: str, embeddings: str,
                 model_version: str, triton_url: str | None, checkpoint: str | None, ray_address: str | None,
                 force: bool = False) -> tuple[dict[str, Any], pa.Table]:
    """Runs ``job`` over ``pairs`` (see the module docstring).

    Returns:
        ``(summary, table)``: counts (``pairs``, ``scans_embedded``, ``skipped``, ``done``,
        ``failed``), the table's URI and rows; and the gathered table itself.
    """
    summary: dict[str, Any] = {"pairs": len(pairs), "model_version": model_version}
    checked, invalid = _check_pairs(job, pairs)
    ready, failed, n_embedded = embed_missing(checked, embeddings, model_version, triton_url, checkpoint,
                                              ray_address, job.roles)
    failed = invalid + failed
    summary["scans_embedded"] = n_embedded
    manifest = Manifest(manifest_uri)
    for pair, error in failed:
        try:
            version = job.version(settings, pair)
        except ValueError:
            version = model_version
        manifest.record(pair.pair_id, pair.uri, "error", error, version)
    todo = [p for p in ready if force or not job.done(manifest, p, settings)]
    summary["skipped"] = len(ready) - len(todo)
    if todo:
        init_ray(ray_address)
        fan_out(job.task, todo, (settings,), add_record(manifest), job.label)
    manifest.save()
    done = [p for p in pairs if job.done(manifest, p, settings)]
    table = read_files([job.part_uri(out, p.pair_id) for p in done], job.schema)
    uri = job.table_uri(out)
    write_table_atomic(table, uri)
    summary.update(done=len(done), failed=len(pairs) - len(done), table_uri=uri, rows=table.num_rows)
    return summary, table


__all__ = ["PairJob", "run_pair_job"]
