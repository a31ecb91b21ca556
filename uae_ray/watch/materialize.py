"""New studies of a PACS become scans of the watcher's archive, de-identified.

Each study gives one series, its *primary* one: of the pipeline's modalities the first that the
study has (CT before MR by default), the series with the most instances, at least
``min_slices``. It is fetched with WADO-RS into a temporary folder, read and checked as every
DICOM series is (:func:`~uae_ray.volume.read_dicom_series`: one series, no missing slice, a
sane geometry) and written to ``<out>/watch/series/<series_key>/``:

* ``meta.json`` (written first): ``patient`` (the hashed patient id), ``study_date``,
  ``study_time``, ``modality``, ``study_uid``, ``series_uid``, ``study_key``, ``series_key``,
  ``source`` (``pacs``) and ``rel`` (the image's path below the watcher's archive);
* ``image.nii.gz`` (written last, atomically): the pixels and geometry only.

De-identification profile (``docs/watch.md``): nothing of the DICOM header reaches the output
but the fields above. The patient id is replaced by its stable hash (as ``cohort`` does);
the name, birth date, sex, accession number, institution, physicians, device serials and
every other attribute are dropped. Dates and times are kept (DICOM PS3.15 "Retain
Longitudinal Temporal Information with Full Dates": pairing needs them) and so are the study
and series UIDs ("Retain UIDs": the SEG and SR sent back reference the source series).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from uae_ray.storage import exists, join, read_bytes, upload_file, write_bytes_atomic
from uae_ray.storage.images import patient_key
from uae_ray.storage.uri import uri_hash
from uae_ray.watch.dicomweb import DicomWebPacs, SeriesInfo, StudyInfo

logger = logging.getLogger(__name__)

SERIES_ROOT = "watch/series"
IMAGE_NAME = "image.nii.gz"
META_NAME = "meta.json"
KEY_HEX = 16


def study_key(study_uid: str) -> str:
    """Stable 16-hex key of a StudyInstanceUID (names folders and manifest records)."""
    return uri_hash(f"study:{study_uid}", KEY_HEX)


def series_key(series_uid: str) -> str:
    """Stable 16-hex key of a SeriesInstanceUID."""
    return uri_hash(f"series:{series_uid}", KEY_HEX)


def series_root(out: str) -> str:
    """The watcher's archive: one folder per materialised series."""
    return join(out, SERIES_ROOT)


def series_folder(out: str, series_uid: str) -> str:
    return join(series_root(out), series_key(series_uid))


@dataclass(frozen=True)
class Materialized:
    """A study's primary series in the watcher's archive."""

    study_key: str
    series_key: str
    image_uri: str
    meta: dict


def primary_series(series: list[SeriesInfo], modalities: tuple[str, ...], min_slices: int) -> SeriesInfo | None:
    """The study's series to process (module docstring), or ``None`` when none qualifies."""
    for modality in modalities:
        candidates = [s for s in series if s.modality == modality and s.instances >= min_slices]
        if candidates:
            return max(candidates, key=lambda s: (s.instances, s.series_uid))
    return None


def read_meta(folder: str) -> dict | None:
    """The ``meta.json`` of a series folder (``None`` when absent)."""
    uri = join(folder, META_NAME)
    return json.loads(read_bytes(uri).decode("utf-8")) if exists(uri) else None


def materialize(pacs: DicomWebPacs, study: StudyInfo, series: SeriesInfo, out: str, staging: Path) -> Materialized:
    """Fetches, checks and stores one series (module docstring); a series already stored is
    not fetched again. The fetched DICOM files stay in the local folder ``staging`` (the SEG
    and SR reference them); the caller removes it.

    Raises:
        PacsError: WADO-RS failed.
        VolumeError: The series is not a usable volume (the message names the series key).
    """
    import SimpleITK as sitk

    from uae_ray.volume import VolumeError, read_dicom_series

    folder = series_folder(out, series.series_uid)
    image_uri = join(folder, IMAGE_NAME)
    meta = {
        "patient": patient_key(study.patient_id) if study.patient_id else None,
        "study_date": study.study_date, "study_time": study.study_time, "modality": series.modality,
        "study_uid": study.study_uid, "series_uid": series.series_uid,
        "study_key": study_key(study.study_uid), "series_key": series_key(series.series_uid),
        "source": "pacs", "rel": f"{series_key(series.series_uid)}/{IMAGE_NAME}",
    }
    if exists(image_uri) and read_meta(folder) == meta:
        return Materialized(meta["study_key"], meta["series_key"], image_uri, meta)
    pacs.retrieve_series(series, staging)
    with tempfile.TemporaryDirectory(prefix="uae-ray-watch-") as tmp:
        try:
            image = read_dicom_series(staging, series.series_uid)
        except VolumeError as e:
            raise VolumeError(f"series {meta['series_key']}", e.cause) from None
        for key in image.GetMetaDataKeys():  # pixels and geometry only
            image.EraseMetaData(key)
        local = Path(tmp) / IMAGE_NAME
        sitk.WriteImage(image, str(local), useCompression=True)
        write_bytes_atomic(join(folder, META_NAME), json.dumps(meta, indent=1).encode("utf-8"))
        upload_file(str(local), image_uri)
    logger.info("series %s of study %s stored (%s, %d instances)", meta["series_key"], meta["study_key"],
                series.modality, series.instances)
    return Materialized(meta["study_key"], meta["series_key"], image_uri, meta)
