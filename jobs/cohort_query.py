"""Ray job entrypoint: find a template's named points in every stored scan of a `cohort embed`
output, from the stored embeddings only.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_query.py --template s3://bucket/template.nii.gz --points points.csv \
            --embeddings s3://bucket/cohort --out s3://bucket/query

Writes ``<out>/query/points.parquet``; ``--coarse-only`` for the global-level answer alone.
The options are those of ``uae-ray cohort query`` (``--help``), which this runs.
"""

import sys

from uae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cohort", "query", *sys.argv[1:]]))
