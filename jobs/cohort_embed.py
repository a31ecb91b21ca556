"""Ray job entrypoint: embed every scan of an archive.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_embed.py --archive s3://bucket/archive --out s3://bucket/cohort

Inside a Ray job ``RAY_ADDRESS`` points at the cluster; the Triton URL and S3 settings come from
``--triton`` / ``UAE_TRITON_URL`` and the ``UAE_S3_*`` environment (the local stack starts its
Ray head with them). Retries are left to the submitter; re-running skips finished scans.
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
    p.add_argument("--triton", default=os.environ.get("UAE_TRITON_URL"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--smoke-test", action="store_true", help="one scan only")
    p.add_argument("--strict", action="store_true", help="exit 1 when any scan failed (default: failures are "
                   "recorded in the manifest and the job succeeds)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from uae_ray.cohort.embed import run_cohort_embed

    return run_cohort_embed(args.archive, args.out, args.triton, force=args.force, limit=1 if args.smoke_test else None)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    summary = main(args)
    print(json.dumps(summary, indent=2))
    sys.exit(1 if args.strict and summary.get("failed") else 0)
