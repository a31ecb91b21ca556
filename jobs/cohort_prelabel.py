"""Ray job entrypoint: localize and segment organs in every scan of an archive (MedLSAM pre-labels).

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/cohort_prelabel.py --archive s3://bucket/archive --out s3://bucket/cohort \
            --support s3://bucket/atlas/ct1.nii.gz:s3://bucket/atlas/ct1_labels.nii.gz --organs liver,spleen

One Ray task per scan; the supports are loaded (and embedded) once by this driver. Writes
``<out>/labels/<scan_id>.nii.gz`` (+ ``.json``), ``<out>/prelabel/index.parquet``, the QC report
``<out>/qc/prelabel.html`` and the manifest ``<out>/manifests/prelabel``. The Triton URL and S3
settings come from ``--triton`` / ``UAE_TRITON_URL`` and the ``UAE_S3_*`` environment. Retries
are left to the submitter; re-running skips finished scans.

The options are those of ``uae-ray cohort prelabel`` (``--help``), which this runs: ``--limit 1``
for a smoke run, ``--strict`` to exit 1 when any item failed.
"""

import sys

from uae_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["cohort", "prelabel", *sys.argv[1:]]))
