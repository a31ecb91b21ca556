"""Settings of a ``cohort prelabel`` job (shared with its workers) and the layout of its outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from uae_ray.storage import join


PRELABEL_MANIFEST = "manifests/prelabel"
#: Scans shown in the QC report (the index has all of them).
REPORT_MAX_SCANS = 200


class PrelabelError(ValueError):
    """Nothing to do: no organ named, no usable support, no support with any of the organs, or
    a model that cannot be loaded (one line)."""


@dataclass(frozen=True)
class PrelabelSettings:
    """What every prelabel task needs (shared with the workers through the object store).

    Attributes:
        supports: the loaded supports that have at least one of the organs.
        support_maps: ``{support image URI: EmbeddingMaps}`` (embedding localizer), else empty.
        reported: label files whose missing organs the driver has already named (the workers'
            localizer repeats those warnings per scan; they are dropped there).
        version: manifest version (localizer version | SAM version | job key).
    """

    out: str
    manifest: str
    organs: tuple[str, ...]
    supports: tuple
    support_maps: dict = field(repr=False)
    boxes: str
    method: str
    embedding_mode: str | None
    triton_url: str | None
    checkpoint: str | None
    medlam_checkpoint: str | None
    sam_checkpoint: str | None
    sam_kind: str | None
    modality: str | None
    localizer_version: str
    sam_version: str
    job_key: str
    qc: bool
    reported: tuple[str, ...]
    env: dict[str, str]
    dicom_seg: bool = False

    @property
    def version(self) -> str:
        return f"{self.localizer_version}|{self.sam_version}|{self.job_key}"


def labels_uri(out: str, scan_id: str) -> str:
    return join(out, "labels", f"{scan_id}.nii.gz")


def dicom_seg_uri(out: str, scan_id: str) -> str:
    return join(out, "dicom_seg", f"{scan_id}.dcm")


def part_uri(out: str, scan_id: str) -> str:
    return join(out, "prelabel", "parts", f"{scan_id}.parquet")


def index_uri(out: str) -> str:
    return join(out, "prelabel", "index.parquet")


def qc_uri(out: str, scan_id: str, label: int) -> str:
    return join(out, "qc", "prelabel", scan_id, f"{label}.png")


def default_report_uri(out: str) -> str:
    return join(out, "qc", "prelabel.html")
