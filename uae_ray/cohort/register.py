"""``uae-ray cohort register``: a rigid or affine transform (fixed -> moving) for every pair of
scans, one Ray task per pair, from the stored embeddings (scans without them are embedded
through Triton first, by the ``cohort embed`` tasks, so later jobs reuse them).

Pairs come from :func:`~uae_ray.cohort.pairs.load_pairs` (CSV columns ``fixed`` and
``moving``, optional ``fixed_modality`` / ``moving_modality``; without a CSV, consecutive
scans of each patient of the archive). A task reads both images (the fixed body grid and the
second pass need them), checks the modality flags against them, matches in the stored
embeddings (embedding the de-rotated moving image through Triton for the second pass, see
:class:`~uae_ray.tasks.register.Registrar`), optionally refines with Mattes MI, and writes:

  ``transforms/tfm/<pair_id>.tfm``       the ITK transform file (fixed -> moving)
  ``transforms/parts/<pair_id>.parquet`` its row (schema :data:`~uae_ray.storage.schemas.TRANSFORMS`)
  ``transforms/transforms.parquet``      all rows (written by the driver)
  ``manifests/register``                 status per pair (keyed by pair id)

Only hashed ids (pair, fixed and moving scan ids) appear in the tables; patient ids read for
``--same-patient`` are hashed at once and never logged or written. A pair that fails (too few
correspondences, a modality flag that contradicts the image, two patients where one is
required, a scan that cannot be embedded) is recorded with its one-line error and the others
go on. A re-run skips the pairs that are ``ok`` for the same model, transform kind, refinement
and flags.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from uae_ray.cohort.embed import persist_record
from uae_ray.cohort.job import PairJob, run_pair_job
from uae_ray.cohort.maps_io import embeddings_uri, read_maps
from uae_ray.cohort.pairs import PairsError, ScanPair, load_pairs
from uae_ray.cohort.runner import apply_worker_env, one_line, worker_env
from uae_ray.serving import get_embedder
from uae_ray.storage import ScanRef, basename, join, write_bytes_atomic, write_table_atomic
from uae_ray.storage.images import SCAN_ID_HEX, is_image_name
from uae_ray.storage.schemas import TRANSFORMS
from uae_ray.storage.uri import uri_hash

if TYPE_CHECKING:
    from uae_ray.tasks.register import RegistrationResult

logger = logging.getLogger(__name__)

REGISTER_MANIFEST = "manifests/register"
FIXED_COL, MOVING_COL = "fixed", "moving"
FIXED_MODALITY_COL, MOVING_MODALITY_COL = "fixed_modality", "moving_modality"


@dataclass(frozen=True)
class RegisterSettings:
    """What every register task needs (shared with the workers through the object store)."""

    out: str
    embeddings: str
    manifest: str
    kind: str
    refine: bool
    model_version: str
    triton_url: str | None
    checkpoint: str | None
    fixed_modality: str | None
    moving_modality: str | None
    same_patient: bool
    env: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.kind}+refine" if self.refine else self.kind


def tfm_uri(out: str, pair_id: str) -> str:
    return join(out, "transforms", "tfm", f"{pair_id}.tfm")


def part_uri(out: str, pair_id: str) -> str:
    return REGISTER_JOB.part_uri(out, pair_id)


def pair_version(settings: RegisterSettings, pair: ScanPair) -> str:
    """Manifest version of a pair: model, transform kind, refinement and the modality and
    same-patient flags (a change of any redoes the pair)."""
    flags = "|".join(str(v) for v in (*pair_modalities(settings, pair), settings.same_patient))
    return f"{settings.model_version}|{settings.label}|{uri_hash(flags, 12)}"


def pair_modalities(settings: RegisterSettings, pair: ScanPair) -> tuple[str | None, str | None]:
    """The modality flags of a pair: the job's flag and the CSV column must agree.

    Raises:
        ValueError: The job flag and the pair's column disagree (the message names the pair).
    """
    out = []
    for role, flag, col in (("fixed", settings.fixed_modality, FIXED_MODALITY_COL),
                            ("moving", settings.moving_modality, MOVING_MODALITY_COL)):
        column = (pair.columns.get(col) or "").strip().upper() or None
        if flag and column and flag.upper() != column:
            raise ValueError(
                f"pair {pair.pair_id}: --{role}-modality {flag.upper()} but its {col} column says {column}"
            )
        value = flag or column
        out.append(value.upper() if value else None)
    return out[0], out[1]


def _patient_key(uri: str, scan_id: str) -> str | None:
    from uae_ray.cohort.pairs import scan_info

    info = scan_info(ScanRef(uri, scan_id, "file" if is_image_name(basename(uri)) else "dicom"))
    patient = info.get("patient")
    return uri_hash(f"patient:{patient}", SCAN_ID_HEX) if patient else None


def check_same_patient(pair: ScanPair) -> None:
    """Raises ``ValueError`` unless both scans carry the same patient id (DICOM PatientID or a
    ``meta.json`` ``patient``); the message names the pair's scan ids only."""
    keys = {role: _patient_key(uri, sid) for role, uri, sid in
            (("fixed", pair.first, pair.first_id), ("moving", pair.second, pair.second_id))}
    missing = [role for role, key in keys.items() if key is None]
    if missing:
        raise ValueError(
            f"pair {pair.pair_id}: --same-patient needs a patient id (DICOM PatientID or meta.json 'patient') "
            f"for the {' and '.join(missing)} scan"
        )
    if keys["fixed"] != keys["moving"]:
        raise ValueError(
            f"pair {pair.pair_id}: scans {pair.first_id} and {pair.second_id} are of different patients "
            "(--same-patient)"
        )


def transforms_table(pair: ScanPair, result: "RegistrationResult", uri: str, seconds: float) -> pa.Table:
    """One row of :data:`~uae_ray.storage.schemas.TRANSFORMS` for a registered pair."""
    tx = result.transform
    return pa.table(
        {
            "pair_id": [pair.pair_id],
            "fixed_id": [pair.first_id],
            "moving_id": [pair.second_id],
            "type": [result.kind],
            "parameters": [list(map(float, tx.GetParameters()))],
            "fixed_parameters": [list(map(float, tx.GetFixedParameters()))],
            "n_correspondences": [result.n_correspondences],
            "n_inliers": [result.n_inliers],
            "inlier_fraction": [result.inlier_fraction],
            "residual_mm": [result.residual_mm],
            "overlap_fraction": [result.overlap_fraction],
            "refined": [result.refined],
            "tfm_uri": [uri],
            "model_version": [result.model_version],
            "seconds": [seconds],
        },
        schema=TRANSFORMS,
    )


def register_pair(pair: ScanPair, settings: RegisterSettings) -> dict[str, Any]:
    """Registers one pair from its stored embeddings; writes its .tfm and its row. Never raises:
    returns a manifest record."""
    apply_worker_env(settings.env)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"scan_id": pair.pair_id, "uri": pair.uri}
    try:
        from uae_ray.storage.images import read_image_uri
        from uae_ray.tasks.register import Registrar, check_modality
        from uae_ray.tasks.transforms import transform_to_bytes

        fixed_flag, moving_flag = pair_modalities(settings, pair)
        if settings.same_patient:
            check_same_patient(pair)
        fixed = read_image_uri(pair.first)
        fixed_mod = check_modality(fixed, pair.first, fixed_flag)
        moving = read_image_uri(pair.second)
        moving_mod = check_modality(moving, pair.second, moving_flag)
        maps = {}
        for role, sid in (("fixed", pair.first_id), ("moving", pair.second_id)):
            maps[role] = read_maps(embeddings_uri(settings.embeddings, sid))
            if maps[role].model_version != settings.model_version:
                raise ValueError(f"stored {role} embeddings are of model {maps[role].model_version}, "
                                 f"the job's of {settings.model_version}")
        embedder = get_embedder(settings.triton_url, checkpoint=settings.checkpoint)
        registrar = Registrar(embedder, fixed, fixed_mod, fixed_name=pair.first, fixed_maps=maps["fixed"])
        result = registrar.register(moving, settings.kind, moving_mod, settings.refine, moving_name=pair.second,
                                    moving_maps=maps["moving"])
        uri = tfm_uri(settings.out, pair.pair_id)
        write_bytes_atomic(uri, transform_to_bytes(result.transform))
        table = transforms_table(pair, result, uri, time.perf_counter() - t0)
        part = part_uri(settings.out, pair.pair_id)
        write_table_atomic(table, part)
        record.update(status="ok", model_version=pair_version(settings, pair), output_uri=part, n_bytes=table.nbytes)
    except Exception as e:  # recorded per pair; the job goes on
        record.update(status="error", error=one_line(e))
    record["seconds"] = time.perf_counter() - t0
    return persist_record(settings.manifest, record)


def run_cohort_register(
    pairs_csv: str | None,
    out: str,
    triton_url: str | None,
    archive: str | None = None,
    embeddings: str | None = None,
    ray_address: str | None = None,
    checkpoint: str | None = None,
    force: bool = False,
    limit: int | None = None,
    kind: str = "rigid",
    refine: bool = False,
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    same_patient: bool = False,
) -> dict[str, Any]:
    """Registers every pair (see the module docstring); returns a summary.

    Raises:
        PairsError: No usable pairs (no CSV and no archive, an unusable CSV, no rows).
        ValueError: An unknown transform kind or modality flag.
    """
    from uae_ray.tasks.transforms import KINDS
    from uae_ray.volume import parse_modality

    if kind not in KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {', '.join(KINDS)}")
    fixed_modality = parse_modality(fixed_modality, "--fixed-modality") if fixed_modality else None
    moving_modality = parse_modality(moving_modality, "--moving-modality") if moving_modality else None
    embeddings = embeddings or out
    pairs = load_pairs(pairs_csv, FIXED_COL, MOVING_COL, archive)
    pairs = pairs[:limit] if limit else pairs
    if not pairs:
        raise PairsError(f"{pairs_csv or archive}: no pairs")
    model_version = get_embedder(triton_url, checkpoint=checkpoint).version
    settings = RegisterSettings(out, embeddings, join(out, REGISTER_MANIFEST), kind, refine, model_version,
                                triton_url, checkpoint, fixed_modality, moving_modality, same_patient, worker_env())
    logger.info("cohort register: %d pairs, %s, model %s", len(pairs), settings.label, model_version)
    summary: dict[str, Any] = {"pairs": len(pairs), "transform": settings.label, "model_version": model_version}

    job_summary, _ = run_pair_job(REGISTER_JOB, pairs, settings, settings.manifest, out, embeddings, model_version,
                                  triton_url, checkpoint, ray_address, force)
    summary.update(job_summary)
    summary["transforms_uri"] = summary.pop("table_uri")
    return summary


#: ``cohort register`` on the pair-job skeleton.
REGISTER_JOB = PairJob("cohort register", "transforms", TRANSFORMS, ("fixed", "moving"), register_pair, pair_version)


__all__ = ["REGISTER_MANIFEST", "RegisterSettings", "check_same_patient", "register_pair", "run_cohort_register",
           "transforms_table"]
