"""``uae-ray cohort embed|landmarks|track|register|prelabel``: Ray jobs over an archive."""

from __future__ import annotations

import argparse
import json
import logging
import os

logger = logging.getLogger(__name__)


def service_defaults(triton: str | None, ray_address: str | None) -> tuple[str | None, str | None]:
    """Fills the Triton URL, Ray address and S3 settings from the local stack when it is up
    and nothing else was given (explicit flags and environment variables win)."""
    from uae_ray.stack import StackConfig, client_env, stack_status

    triton = triton or os.environ.get("UAE_TRITON_URL")
    ray_address = ray_address or os.environ.get("UAE_RAY_ADDRESS")
    config = StackConfig.load()
    status = stack_status(config)
    if status.healthy:
        env = client_env(config)
        for key, value in env.items():
            if key != "RAY_ADDRESS":  # S3 credentials, Ray auth mode and loopback settings
                os.environ.setdefault(key, value)
        triton = triton or env["UAE_TRITON_URL"]
        ray_address = ray_address or env["UAE_RAY_ADDRESS"]
    return triton, ray_address


def run(args: argparse.Namespace) -> int:
    """Runs a cohort job. Exit codes: 0 done (failures recorded per scan), 1 with ``--strict``
    and a failure, 2 nothing to do or stopped (one error line: no scans, no pairs, unusable
    inputs, S3, Triton or the cluster unreachable; a re-run finishes what a stopped job left)."""
    from uae_ray.cohort.embed import CohortInputError
    from uae_ray.cohort.lease import JobLease, LeaseHeldError
    from uae_ray.cohort.pairs import PairsError
    from uae_ray.cohort.prelabel import PrelabelError
    from uae_ray.cohort.query import QueryInputError
    from uae_ray.cohort.runner import ServiceUnreachableError
    from uae_ray.storage import StorageError
    from uae_ray.volume.errors import one_line

    if args.job == "register" and not args.pairs and not args.archive:
        logger.error("cohort register: give --pairs and/or --archive")
        return 2
    try:
        triton, ray_address = service_defaults(args.triton, args.ray_address)
        with JobLease(args.out, args.job):  # one job per output prefix at a time
            summary = _run_job(args, triton, ray_address)
    except (CohortInputError, LeaseHeldError, PairsError, PrelabelError, QueryInputError, StorageError,
            FileNotFoundError, ServiceUnreachableError) as e:
        logger.error("cohort %s: %s", args.job, one_line(e))
        return 2
    except ValueError as e:  # unusable template points, lesions, supports: nothing to do
        logger.error("cohort %s: %s", args.job, one_line(e))
        return 2
    print(json.dumps(summary, indent=2))
    if summary.get("failed"):
        what = "pair" if args.job in ("track", "register") else "scan"
        logger.warning("%d %s(s) failed; see the manifest under %s", summary["failed"], what, args.out)
    return 1 if args.strict and (summary.get("failed") or summary.get("supports_failed")) else 0


def _run_job(args: argparse.Namespace, triton: str | None, ray_address: str | None) -> dict:
    if args.job == "embed":
        from uae_ray.cohort.embed import run_cohort_embed

        return run_cohort_embed(args.archive, args.out, triton, ray_address, force=args.force, limit=args.limit,
                                tier=args.storage_tier, workers=args.workers)
    if args.job == "track":
        from uae_ray.cohort.track import run_cohort_track

        return run_cohort_track(args.pairs, args.out, triton, args.archive, args.embeddings, ray_address,
                                force=args.force, limit=args.limit, method=args.method, extent=not args.no_extent)
    if args.job == "register":
        from uae_ray.cohort.register import run_cohort_register

        return run_cohort_register(args.pairs, args.out, triton, args.archive, args.embeddings, ray_address,
                                   force=args.force, limit=args.limit, kind=args.transform, refine=args.refine,
                                   fixed_modality=args.fixed_modality, moving_modality=args.moving_modality,
                                   same_patient=args.same_patient)
    if args.job == "prelabel":
        from uae_ray.cohort.prelabel import run_cohort_prelabel

        return run_cohort_prelabel(
            args.archive, args.support, args.organs, args.out, triton, ray_address,
            label_names=args.label_names, boxes=args.boxes, method=args.method,
            embedding_mode=args.embedding_mode, checkpoint=args.checkpoint,
            medlam_checkpoint=args.medlam_checkpoint, sam_checkpoint=args.sam_checkpoint,
            sam_kind=args.sam_kind, modality=args.modality, force=args.force, limit=args.limit,
            report=args.report, qc=not args.no_report, dicom_seg=args.dicom_seg,
        )
    if args.job == "query":
        from uae_ray.cohort.query import run_cohort_query

        return run_cohort_query(args.template, args.points, args.embeddings, args.out, triton,
                                checkpoint=args.checkpoint, refine=not args.coarse_only, limit=args.limit)
    from uae_ray.cohort.landmarks import run_cohort_landmarks

    return run_cohort_landmarks(args.archive, args.out, args.template, args.points, triton, args.embeddings,
                                ray_address, force=args.force, limit=args.limit, method=args.method)
