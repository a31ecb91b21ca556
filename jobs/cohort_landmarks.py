"""Ray job entrypoint: detect a template's named points in every scan of an archive.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_landmarks.py --archive s3://bucket/archive --out s3://bucket/cohort \
            --template s3://bucket/template.nii.gz --points points.csv

Matches against stored embeddings (``--embeddings``, default ``--out``), embedding the scans
that have none first. Writes ``<out>/landmarks/detections.parquet``.
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
    p.add_argument("--archive", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--points", required=True)
    p.add_argument("--embeddings")
    p.add_argument("--method", choices=["nn", "fixed-point"], default="fixed-point")
    p.add_argument("--triton", default=os.environ.get("UAE_TRITON_URL"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--smoke-test", action="store_true", help="one scan only")
    p.add_argument("--strict", action="store_true", help="exit 1 when any scan failed (default: failures are "
                   "recorded in the manifest and the job succeeds)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from uae_ray.cohort.landmarks import run_cohort_landmarks

    return run_cohort_landmarks(
        args.archive, args.out, args.template, args.points, args.triton, args.embeddings,
        force=args.force, limit=1 if args.smoke_test else None, method=args.method,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    summary = main(args)
    print(json.dumps(summary, indent=2))
    sys.exit(1 if args.strict and summary.get("failed") else 0)
