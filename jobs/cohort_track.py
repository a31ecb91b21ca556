"""Ray job entrypoint: track baseline lesions into follow-up scans, one Ray task per pair.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_track.py --pairs s3://bucket/pairs.csv --archive s3://bucket/archive \
            --out s3://bucket/cohort

``--pairs``: CSV with ``baseline,followup`` and ``lesions`` (name,x,y,z[,radius_mm] CSV) and/or
``lesion_mask`` columns; without it, consecutive scans of each patient of ``--archive`` (with a
``lesions.csv`` beside each baseline). Matches in stored embeddings (``--embeddings``, default
``--out``), embedding the scans that have none first. Writes ``<out>/tracks/tracks.parquet``.
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
    p.add_argument("--method", choices=["nn", "fixed-point"], default="fixed-point")
    p.add_argument("--no-extent", action="store_true", help="match lesion centres only")
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
    from uae_ray.cohort.track import run_cohort_track

    return run_cohort_track(
        args.pairs, args.out, args.triton, args.archive, args.embeddings,
        force=args.force, limit=1 if args.smoke_test else None, method=args.method, extent=not args.no_extent,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    summary = main(args)
    print(json.dumps(summary, indent=2))
    sys.exit(1 if args.strict and summary.get("failed") else 0)
