"""The curated cases of ``../shared/data`` (see its README): images, labels, landmarks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from uae_ray.data.manifest import manifest_rows
from uae_ray.tasks.points_io import NamedPoints, read_points_csv
from uae_ray.volume import labels_on_border, read_image

# Landmark names that are not anatomy shared between patients (tumours, planning volumes).
NON_ANATOMICAL = frozenset({"gtv", "ptv"})

#: Two cases "share anatomy" when they have at least this many anatomical landmark names in
#: common (one shared long structure such as the spinal cord does not make a shared view).
MIN_SHARED = 2


def default_data_dir() -> Path | None:
    """``$UAE_DATA``, else ``shared/data`` beside the repository or the working directory."""
    candidates = [os.environ.get("UAE_DATA")]
    repo = Path(__file__).resolve().parents[2]
    candidates += [str(repo.parent / "shared" / "data"), str(Path.cwd().parent / "shared" / "data")]
    for c in candidates:
        if c and (Path(c) / "manifest.csv").is_file():
            return Path(c)
    return None


@dataclass
class Case:
    """One curated case.

    Attributes:
        case_id: folder name under ``cases/``.
        modality: "CT" or "MR".
        patient: opaque patient id (scans of one patient share it).
        folder: the case folder.
    """

    case_id: str
    modality: str
    patient: str
    folder: Path
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def image_path(self) -> Path:
        return self.folder / "image.nii.gz"

    @property
    def labels_path(self) -> Path | None:
        p = self.folder / "labels.nii.gz"
        return p if p.is_file() else None

    @cached_property
    def landmarks(self) -> NamedPoints | None:
        p = self.folder / "landmarks.csv"
        return read_points_csv(p) if p.is_file() else None

    def anatomical_landmarks(self) -> NamedPoints | None:
        """Landmarks without tumours/planning volumes (see :data:`NON_ANATOMICAL`)."""
        lm = self.landmarks
        if lm is None:
            return None
        keep = [i for i, n in enumerate(lm.names) if n not in NON_ANATOMICAL]
        return NamedPoints(tuple(lm.names[i] for i in keep), lm.xyz[keep]) if keep else None

    def read(self) -> sitk.Image:
        return read_image(self.image_path)

    @cached_property
    def whole_structures(self) -> frozenset[str]:
        """Labelled structures that the field of view does not cut (their centroid is then a
        corresponding point between patients).

        From ``label_details`` of ``meta.json`` where given (not touching the first or last
        slice or the in-plane border), else from ``labels.nii.gz``: no voxel of the label on
        any face of the image. Landmarks without a label are never counted whole.
        """
        details = self.meta.get("label_details")
        if details:
            flags = ("touches_first_slice", "touches_last_slice", "touches_inplane_border")
            return frozenset(n for n, d in details.items() if not any(d.get(f) for f in flags))
        if self.labels_path is None:
            return frozenset()
        return whole_labels(sitk.GetArrayFromImage(sitk.ReadImage(str(self.labels_path))), self.label_names)

    @property
    def label_names(self) -> dict[int, str]:
        """Label id -> structure name from ``meta.json``."""
        return {int(k): str(v) for k, v in (self.meta.get("labels") or {}).items()}


def whole_labels(labels: np.ndarray, names: dict[int, str]) -> frozenset[str]:
    """Names of the labels of a (Z, Y, X) label array present in it and absent from all six faces."""
    on_border = labels_on_border(labels)
    present = set(np.unique(labels).tolist()) - {0}
    return frozenset(names[i] for i in present - on_border if i in names)


def load_cases(data_dir: str | Path, modality: str | None = None) -> list[Case]:
    """Lists the cases of ``manifest.csv`` (optionally one modality), sorted by case id."""
    data_dir = Path(data_dir)
    cases = []
    for row in manifest_rows(data_dir):
        if modality and row["modality"] != modality.upper():
            continue
        folder = data_dir / "cases" / row["case_id"]
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        cases.append(Case(row["case_id"], row["modality"], row["patient"], folder, meta))
    return sorted(cases, key=lambda c: c.case_id)


def measured_cases(cases: list[Case], split: str | Path | None, trained_on: list[str] | None = None,
                   model: str = "model", keep: Callable[[Case], bool] | None = None) -> list[Case]:
    """The cases of a split's test side (``split=None``: all) that ``keep`` selects, after
    refusing a model trained on one of their patients.

    Args:
        cases: Every case of the data folder (the patients of ``trained_on`` are looked up here).
        split: Split name or file.
        trained_on: The model's training case ids; ``None``: not checked.
        model: Model name for the message.
        keep: Which test-side cases are measured (default: all).

    Raises:
        SplitError: see :func:`uae_ray.split.check_unseen`.
    """
    from uae_ray.split import check_unseen, load_split

    test = cases if split is None else [c for c in cases if load_split(split).is_test(c.patient)]
    chosen = [c for c in test if keep is None or keep(c)]
    if trained_on is not None:
        check_unseen(trained_on, [c.case_id for c in chosen], {c.case_id: c.patient for c in cases}, model)
    return chosen
