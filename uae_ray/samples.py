"""Real sample CTs for the demo, fetched with ``pip download`` of two sdists (never committed).

- totalsegmentator 2.18.0: ``tests/reference_files/`` holds an abdomen-pelvis CT with its
  TotalSegmentator label map, a chest CT angiography, a 30-slice crop and a 20-file DICOM series.
- pyradiomics 3.0.1: ``data/`` holds two chest CTs (NRRD).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.tasks.points_io import NamedPoints
from uae_ray.volume import labels_on_border

logger = logging.getLogger(__name__)

SDISTS = {"totalsegmentator": "2.18.0", "pyradiomics": "3.0.1"}
_TS = "totalsegmentator-2.18.0/tests/reference_files/"

# name in the demo archive -> member (a file, or a folder prefix for a DICOM series)
SAMPLES = {
    "abdomen_pelvis_ct.nii.gz": ("totalsegmentator", _TS + "example_ct.nii.gz"),
    "abdomen_crop_ct.nii.gz": ("totalsegmentator", _TS + "example_ct_sm.nii.gz"),
    "chest_cta.nii.gz": ("totalsegmentator", _TS + "aorta_report/example_ct.nii.gz"),
    "upper_abdomen_dicom/": ("totalsegmentator", _TS + "example_ct_dicom/"),
    "lung1_ct.nrrd": ("pyradiomics", "pyradiomics-3.0.1/data/lung1_image.nrrd"),
    "lung2_ct.nrrd": ("pyradiomics", "pyradiomics-3.0.1/data/lung2_image.nrrd"),
}
TEMPLATE = "abdomen_pelvis_ct.nii.gz"
TEMPLATE_LABELS = ("totalsegmentator", _TS + "example_seg_fast_force_split.nii.gz")
# TotalSegmentator 'total' class ids of the demo's named points (organ centroids).
TEMPLATE_POINTS = {
    "liver": 5,
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "vertebrae_T12": 32,
    "vertebrae_L3": 29,
}


#: Label maps that come with some of the demo's target scans (TotalSegmentator predictions shipped
#: as test references): sample name -> (package, member, {point name: label id}); a member ending
#: in ``.nii.gz`` with no ids is one binary mask per point, ``{member}{name}.nii.gz``.
TRUTH_LABELS = {
    "upper_abdomen_dicom/": ("totalsegmentator", _TS + "example_seg_dicom.nii.gz", TEMPLATE_POINTS),
    "abdomen_crop_ct.nii.gz": ("totalsegmentator", _TS + "example_seg.nii.gz", TEMPLATE_POINTS),
    "chest_cta.nii.gz": ("totalsegmentator", _TS + "aorta_report/test_result/models/", {"vertebrae_T12": 1}),
}


def default_cache() -> Path:
    """``$UAE_CACHE`` or ``~/.cache/uae-ray``."""
    return Path(os.environ.get("UAE_CACHE", Path.home() / ".cache" / "uae-ray"))


def fetch_sdists(cache: Path | None = None) -> dict[str, Path]:
    """Downloads the two sdists with pip (once; cached). Returns package -> tarball path."""
    folder = (cache or default_cache()) / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}-{version}.tar.gz" for name, version in SDISTS.items()}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        specs = [f"{name}=={SDISTS[name]}" for name in missing]
        logger.info("pip download %s (about 70 MB, once)", " ".join(specs))
        # --no-build-isolation: pyradiomics' setup needs numpy to report its metadata.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--disable-pip-version-check", "-q", "-d", str(folder), *specs]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return paths


def _extract(tar: tarfile.TarFile, member: str, dest: Path) -> None:
    if member.endswith("/"):
        dest.mkdir(parents=True, exist_ok=True)
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith(member) and "/" not in m.name[len(member):]:
                (dest / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(tar.extractfile(member).read())


@dataclass
class SampleSet:
    """The extracted samples: ``folder/<name>`` per :data:`SAMPLES` entry, plus the template's
    label map and points, and the truth of the targets that come with labels.

    Attributes:
        truth: Sample name -> the centroids of the template's point structures that its own
            label map holds *whole* (no voxel on a face of the label image: the centroid of an
            organ the field of view cuts is not the same anatomical point).
        cut: Sample name -> structures its label map holds but the field of view cuts.
    """

    folder: Path
    template_labels: Path
    template_points: NamedPoints
    truth: dict[str, NamedPoints] = field(default_factory=dict)
    cut: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def scans(self) -> dict[str, Path]:
        return {name: self.folder / name.rstrip("/") for name in SAMPLES}


def label_centroids(labels: sitk.Image, ids: dict[str, int]) -> NamedPoints:
    """World centroids (LPS mm) of the voxel centres of each label (labels must be present)."""
    arr = sitk.GetArrayViewFromImage(labels)
    names, points = [], []
    for name, label in ids.items():
        zyx = np.argwhere(arr == label)
        if len(zyx) == 0:
            raise ValueError(f"label {label} ({name}) is absent from the template label map")
        idx = zyx.mean(axis=0)[::-1]
        names.append(name)
        points.append(labels.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx)))
    return NamedPoints(tuple(names), np.array(points))


def prepare_samples(cache: Path | None = None) -> SampleSet:
    """Fetches (once) and extracts the demo's sample scans and computes the template's points."""
    cache = cache or default_cache()
    tarballs = fetch_sdists(cache)
    folder = cache / "samples"
    labels_path = cache / "template_labels.nii.gz"
    opened = {name: tarfile.open(path) for name, path in tarballs.items()}
    try:
        for name, (package, member) in SAMPLES.items():
            dest = folder / name.rstrip("/")
            if not dest.exists():
                _extract(opened[package], member, dest)
        if not labels_path.exists():
            _extract(opened[TEMPLATE_LABELS[0]], TEMPLATE_LABELS[1], labels_path)
        truth, cut = _target_truth(opened, cache / "truth")
    finally:
        for t in opened.values():
            t.close()
    points = label_centroids(sitk.ReadImage(str(labels_path)), TEMPLATE_POINTS)
    return SampleSet(folder, labels_path, points, truth, cut)


def whole_centroids(masks: dict[str, sitk.Image]) -> tuple[NamedPoints, tuple[str, ...]]:
    """World centroids of the binary masks that touch no face of their image, and the names of
    the others (cut by the field of view). Empty masks are left out."""
    names, points, cut = [], [], []
    for name, mask in masks.items():
        arr = sitk.GetArrayFromImage(mask) > 0
        if not arr.any():
            continue
        if True in labels_on_border(arr):
            cut.append(name)
            continue
        idx = np.argwhere(arr).mean(axis=0)[::-1]
        names.append(name)
        points.append(mask.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx)))
    return NamedPoints(tuple(names), np.array(points).reshape(-1, 3)), tuple(cut)


def _target_truth(opened: dict[str, tarfile.TarFile], folder: Path) -> tuple[dict[str, NamedPoints], dict[str, tuple[str, ...]]]:
    truth, cut = {}, {}
    for sample, (package, member, ids) in TRUTH_LABELS.items():
        masks, read = {}, {}
        for name, label in ids.items():
            is_folder = member.endswith("/")
            dest = folder / sample.rstrip("/") / (f"{name}.nii.gz" if is_folder else Path(member).name)
            if not dest.exists():
                _extract(opened[package], member + f"{name}.nii.gz" if is_folder else member, dest)
            if dest not in read:
                read[dest] = sitk.ReadImage(str(dest))
            masks[name] = read[dest] > 0 if is_folder else read[dest] == label
        truth[sample], cut[sample] = whole_centroids(masks)
    return truth, cut
