"""Ray job entrypoint: track baseline lesions into follow-up scans, one Ray task per pair.

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_track.py --pairs s3://bucket/pairs.csv --archive s3://bucket/archive \
            --out s3://bucket/cohort

``--pairs``: CSV with ``baseline,followup`` and ``lesions`` (name,x,y,z[,radius_mm] CSV) and/or
``lesion_mask`` columns; without it, consecutive scans of each patient of ``--archive`` (with a
``lesions.csv`` beside each baseline). Matches in stored embeddings (``--embeddings``, default
``--out``), embedding the scans that have none first. Writes ``<out>/tracks/tracks.parquet``.

The options are those of ``uae-ray cohort track`` (``--help``), which this runs: ``--limit 1``
for a smoke run, ``--strict`` to exit 1 when any item failed.
"""

import sys

from uae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cohort", "track", *sys.argv[1:]]))
