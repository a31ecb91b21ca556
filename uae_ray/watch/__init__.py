"""``uae-ray watch``: scheduled, incremental jobs over a live imaging archive (a DICOMweb
PACS): new studies are fetched de-identified, embedded, paired with the patient's prior,
tracked, registered and pre-labelled through the cohort jobs, and the results go back to the
PACS as DICOM SEG and SR (:mod:`uae_ray.watch.cycle`)."""

from uae_ray.watch.cursor import Cursor, CursorError, read_cursor, write_cursor
from uae_ray.watch.cycle import WatchError, WatchSettings, run_cycle, watch_every
from uae_ray.watch.dicomweb import DicomWebPacs, PacsError, parse_source
from uae_ray.watch.pipeline import Pipeline, PipelineError, load_pipeline, parse_duration, pipeline_from_dict

__all__ = [
    "Cursor",
    "CursorError",
    "DicomWebPacs",
    "PacsError",
    "Pipeline",
    "PipelineError",
    "WatchError",
    "WatchSettings",
    "load_pipeline",
    "parse_duration",
    "parse_source",
    "pipeline_from_dict",
    "read_cursor",
    "run_cycle",
    "watch_every",
    "write_cursor",
]
