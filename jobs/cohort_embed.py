"""Ray job entrypoint: embed every scan of an archive.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_embed.py --archive s3://bucket/archive --out s3://bucket/cohort

Inside a Ray job ``RAY_ADDRESS`` points at the cluster; the Triton URL and S3 settings come from
``--triton`` / ``UAE_TRITON_URL`` and the ``UAE_S3_*`` environment (the local stack starts its
Ray head with them). Retries are left to the submitter; re-running skips finished scans.

The options are those of ``uae-ray cohort embed`` (``--help``), which this runs: ``--limit 1``
for a smoke run, ``--strict`` to exit 1 when any item failed.
"""

import sys

from uae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cohort", "embed", *sys.argv[1:]]))
