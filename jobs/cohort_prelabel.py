"""Ray job entrypoint: localize and segment organs in every scan of an archive (MedLSAM pre-labels).

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_prelabel.py --archive s3://bucket/archive --out s3://bucket/cohort \
            --support s3://bucket/atlas/ct1.nii.gz:s3://bucket/atlas/ct1_labels.nii.gz --organs liver,spleen

One Ray task per scan; the supports are loaded (and embedded) once by this driver. Writes
``<out>/labels/<scan_id>.nii.gz`` (+ ``.json``), ``<out>/prelabel/index.parquet``, the QC report
``<out>/qc/prelabel.html`` and the manifest ``<out>/manifests/prelabel``. The Triton URL and S3
settings come from ``--triton`` / ``UAE_TRITON_URL`` and the ``UAE_S3_*`` environment. Retries
are left to the submitter; re-running skips finished scans.
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
    p.add_argument("--support", required=True, action="append", metavar="IMAGE:LABELS")
    p.add_argument("--organs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--label-names")
    p.add_argument("--boxes", choices=["spl", "wpl"], default="spl")
    p.add_argument("--method", choices=["embedding", "medlam"], default="embedding")
    p.add_argument("--report", help="QC report path or URI (default: <out>/qc/prelabel.html)")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--triton", default=os.environ.get("UAE_TRITON_URL"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--smoke-test", action="store_true", help="one scan only")
    p.add_argument("--strict", action="store_true", help="exit 1 when any scan failed (default: failures are "
                   "recorded in the manifest and the job succeeds)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from uae_ray.cohort.prelabel import run_cohort_prelabel

    return run_cohort_prelabel(
        args.archive, args.support, args.organs, args.out, args.triton, label_names=args.label_names,
        boxes=args.boxes, method=args.method, force=args.force, limit=1 if args.smoke_test else None,
        report=args.report, qc=not args.no_report,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    try:
        summary = main(args)
    except ValueError as e:  # PrelabelError: no organ, no usable support, no model
        logging.getLogger("cohort_prelabel").error("%s", e)
        sys.exit(2)
    print(json.dumps(summary, indent=2))
    sys.exit(1 if args.strict and (summary.get("failed") or summary.get("supports_failed")) else 0)
