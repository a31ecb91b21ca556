"""Results back to the PACS (STOW-RS), where users look for them:

* a **DICOM SEG** of the pre-labels (``cohort prelabel``'s label map, on the source series'
  grid; :func:`~uae_ray.volume.dicom_seg.dicom_seg`);
* a **DICOM SR**, Comprehensive 3D SR with a TID 1500 measurement report: one
  "planar ROI" group per found landmark and per found tracked lesion, each a 3D point
  (SCOORD3D in the source series' frame of reference) with its tracking identifier and the
  match score; abstained points are left out (the Parquet tables keep them).

Both reference the source series, carry the hashed patient id as PatientID and PatientName
(the pseudonym) and have UIDs derived from the series and the model version, so that sending
again after a crash stores the same instances, not copies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from uae_ray.watch.dicomweb import DicomWebPacs, SeriesInfo

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9002
#: Private coding scheme of the values uae-ray reports.
SCHEME = "99UAERAY"


def source_datasets(pacs: DicomWebPacs, meta: dict, staging: Path) -> tuple[Path, list]:
    """The source series' instances (headers only) from the cycle's staging folder, fetched
    again with WADO-RS when the cycle did not fetch them (a re-run)."""
    import pydicom

    folder = staging / meta["series_key"]
    if not folder.is_dir() or not any(folder.iterdir()):
        pacs.retrieve_series(SeriesInfo(meta["study_uid"], meta["series_uid"], meta["modality"], 0), folder)
    files = sorted(folder.glob("*.dcm"))
    return folder, [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def seg_dataset(labels_uri: str, organs: list[str], folder: Path, meta: dict, version: str):
    """The SEG of a pre-label map over the staged source series."""
    from uae_ray.storage import read_labels_uri
    from uae_ray.volume.dicom_seg import derived_uid, dicom_seg

    labels = read_labels_uri(labels_uri)
    names = {k: name for k, name in enumerate(organs, start=1)}
    uids = (derived_uid(f"seg-series:{meta['series_uid']}:{version}"), derived_uid(f"seg:{meta['series_uid']}:{version}"))
    return dicom_seg(labels, names, folder, meta["patient"] or meta["series_key"], version,
                     series_uid=meta["series_uid"], seg_uids=uids)


def _point_group(kind: str, name: str, xyz: tuple[float, float, float], score: float, frame_uid: str, seed: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from uae_ray.volume.dicom_seg import derived_uid

    region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                 graphic_data=np.asarray([xyz], dtype=float), frame_of_reference_uid=frame_uid)
    score_item = hd.sr.Measurement(
        name=hd.sr.CodedConcept("MATCHSCORE", SCHEME, "Embedding match score"), value=float(score),
        unit=codes.UCUM.NoUnits if hasattr(codes.UCUM, "NoUnits") else hd.sr.CodedConcept("1", "UCUM", "no units"))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(f"track:{seed}:{kind}:{name}"),
                                                     identifier=f"{kind} {name}"),
        referenced_region=region,
        finding_type=codes.SCT.Lesion if kind == "lesion" else hd.sr.CodedConcept("LANDMARK", SCHEME,
                                                                                  "Anatomical landmark"),
        measurements=[score_item],
    )


def sr_dataset(points: list[dict], datasets: list, meta: dict, version: str, digest: str):
    """A Comprehensive 3D SR (TID 1500) of found points: dicts with ``kind`` (``landmark`` or
    ``lesion``), ``name``, ``x``, ``y``, ``z`` (world LPS mm), ``score``; ``digest`` (of the
    points) makes its SOP instance UID: the same report twice is the same instance.

    Raises:
        ValueError: No point to report.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from uae_ray.volume.dicom_seg import derived_uid, pseudonymize

    if not points:
        raise ValueError(f"series {meta['series_key']}: no found point to report")
    frame_uid = str(datasets[0].FrameOfReferenceUID)
    groups = [_point_group(p["kind"], p["name"], (p["x"], p["y"], p["z"]), p["score"], frame_uid, meta["series_uid"])
              for p in points]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(f"device:uae-ray:{version}"), name="uae-ray", model_name=version))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion if meta["modality"] == "CT" else codes.SCT.MagneticResonanceImaging,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=datasets, content=report[0],
        series_instance_uid=derived_uid(f"sr-series:{meta['series_uid']}:{version}"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(f"sr:{meta['series_uid']}:{version}:{digest}"), instance_number=1,
        manufacturer="uae-ray", is_complete=True, series_description="uae-ray landmarks and tracked lesions",
    )
    return pseudonymize(sr, meta["patient"] or meta["series_key"])
