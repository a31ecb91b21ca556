"""Ray job entrypoint: a rigid or affine transform (fixed -> moving) for every pair of scans,
one Ray task per pair.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_register.py --pairs s3://bucket/pairs.csv --archive s3://bucket/archive \
            --out s3://bucket/cohort --transform rigid

``--pairs``: CSV with ``fixed,moving`` columns (optional ``fixed_modality``,
``moving_modality``); without it, consecutive scans of each patient of ``--archive``. Matches
in stored embeddings (``--embeddings``, default ``--out``), embedding the scans that have none
first. Writes ``<out>/transforms/tfm/<pair_id>.tfm`` and ``<out>/transforms/transforms.parquet``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs")
    p.add_argument("--archive")
    p.add_argument("--out", required=True)
    p.add_argument("--embeddings")
    p.add_argument("--transform", choices=["rigid", "affine"], default="rigid")
    p.add_argument("--refine", action="store_true", help="refine each transform with a short Mattes-MI registration")
    p.add_argument("--fixed-modality", choices=["CT", "MR"])
    p.add_argument("--moving-modality", choices=["CT", "MR"])
    p.add_argument("--same-patient", action="store_true", help="fail pairs whose scans are of different patients")
    p.add_argument("--triton", default=os.environ.get("UAE_TRITON_URL"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--smoke-test", action="store_true", help="one pair only")
    p.add_argument("--strict", action="store_true", help="exit 1 when any pair failed (default: failures are "
                   "recorded in the manifest and the job succeeds)")
    args = p.parse_args(argv)
    if not args.pairs and not args.archive:
        p.error("give --pairs and/or --archive")
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    from uae_ray.cohort.register import run_cohort_register

    return run_cohort_register(
        args.pairs, args.out, args.triton, args.archive, args.embeddings,
        force=args.force, limit=1 if args.smoke_test else None, kind=args.transform, refine=args.refine,
        fixed_modality=args.fixed_modality, moving_modality=args.moving_modality, same_patient=args.same_patient,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    summary = main(args)
    print(json.dumps(summary, indent=2))
    sys.exit(1 if args.strict and summary.get("failed") else 0)
