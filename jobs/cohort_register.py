"""Ray job entrypoint: a rigid or affine transform (fixed -> moving) for every pair of scans,
one Ray task per pair.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_register.py --pairs s3://bucket/pairs.csv --archive s3://bucket/archive \
            --out s3://bucket/cohort --transform rigid

``--pairs``: CSV with ``fixed,moving`` columns (optional ``fixed_modality``,
``moving_modality``); without it, consecutive scans of each patient of ``--archive``. Matches
in stored embeddings (``--embeddings``, default ``--out``), embedding the scans that have none
first. Writes ``<out>/transforms/tfm/<pair_id>.tfm`` and ``<out>/transforms/transforms.parquet``.

The options are those of ``uae-ray cohort register`` (``--help``), which this runs: ``--limit 1``
for a smoke run, ``--strict`` to exit 1 when any item failed.
"""

import sys

from uae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cohort", "register", *sys.argv[1:]]))
