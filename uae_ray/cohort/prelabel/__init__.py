"""``uae-ray cohort prelabel``: organs localized and segmented in every scan of an archive from k
annotated support scans (MedLSAM, as ``uae-ray segment``), one Ray task per scan.

The driver loads the supports once (a support that cannot be read is an error line and is left
out; a support whose labels lack an organ is named in a warning and not used for that organ; an
organ that no support has is marked in every scan's rows and the others go on), embeds them once
for the embedding localizer (kept in ``references/`` for the next run with the same model), and
ships both to the workers through the object store. Each task
reads its scan, localizes the organs (:func:`~uae_ray.tasks.segment.localize_prompts`), segments
them with segment-anything (Triton with ``triton_url``, else in-process), writes the label map,
its part of the index and, for the QC report, one PNG per segmented organ.

Layout under ``out``:
  ``labels/<scan_id>.nii.gz`` + ``.json``    label map on the scan's grid, label k = the k-th organ
                                            of ``organs`` (the ``segment`` contract) and its sidecar
  ``dicom_seg/<scan_id>.dcm``               with ``dicom_seg``, for DICOM series scans: the label
                                            map as a DICOM SEG referencing the series (patient name
                                            and ID replaced by the hashed patient id)
  ``prelabel/parts/<scan_id>.parquet``      per-scan rows (written by the workers)
  ``prelabel/index.parquet``                all rows, one per (scan, organ), schema
                                            :data:`~uae_ray.storage.schemas.PRELABEL`; a scan that
                                            failed has one ``error`` row per organ
  ``qc/prelabel/<scan_id>/<label>.png``     the three slices through each organ with its contour
  ``qc/prelabel.html``                      the QC report (default; ``report`` moves or disables it)
  ``references/<key>.parquet``              the supports' embedding maps (float16)
  ``manifests/prelabel``                    status per scan
Only hashed scan ids appear in the index and the report. A re-run skips the scans that are
``ok`` for the same supports, organs, options and model versions (``force`` redoes them).

Modules: :mod:`.settings` (job settings, output layout), :mod:`.rows` (index rows), :mod:`.scan`
(the per-scan work and its Ray actor), :mod:`.job` (the driver and the QC report).
"""

from uae_ray.cohort.prelabel.settings import (
    PRELABEL_MANIFEST,
    PrelabelError,
    PrelabelSettings,
    default_report_uri,
    dicom_seg_uri,
    index_uri,
    labels_uri,
    part_uri,
    qc_uri,
)
from uae_ray.cohort.prelabel.rows import error_rows, organ_rows, prelabel_table, row_status
from uae_ray.cohort.prelabel.scan import prelabel_scan, write_qc_images
from uae_ray.cohort.prelabel.job import run_cohort_prelabel, write_report

__all__ = [
    "PRELABEL_MANIFEST",
    "PrelabelError",
    "PrelabelSettings",
    "default_report_uri",
    "dicom_seg_uri",
    "error_rows",
    "index_uri",
    "labels_uri",
    "organ_rows",
    "part_uri",
    "prelabel_scan",
    "prelabel_table",
    "qc_uri",
    "row_status",
    "run_cohort_prelabel",
    "write_qc_images",
    "write_report",
]
