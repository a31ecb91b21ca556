"""Ray job entrypoint: detect a template's named points in every scan of an archive.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_landmarks.py --archive s3://bucket/archive --out s3://bucket/cohort \
            --template s3://bucket/template.nii.gz --points points.csv

Matches against stored embeddings (``--embeddings``, default ``--out``), embedding the scans
that have none first. Writes ``<out>/landmarks/detections.parquet``.

The options are those of ``uae-ray cohort landmarks`` (``--help``), which this runs: ``--limit 1``
for a smoke run, ``--strict`` to exit 1 when any item failed.
"""

import sys

from uae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cohort", "landmarks", *sys.argv[1:]]))
