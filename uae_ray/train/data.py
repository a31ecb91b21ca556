"""Training data: the CT (and MR) cases of a data folder, prepared once at 2 mm and cached in memory.

Every volume is prepared exactly as inference prepares it (:func:`uae_ray.volume.prepare_volume`
with its modality: CT HU clip + linear scale, MR 0.2/99.8 body percentiles), kept with its
modality, its patient id from the manifest and its 2 mm model grid (identity direction), so
volumes of one patient (e.g. a CT and a co-registered MR) can be related in world space.

Where a case has an organ label map (``labels.nii.gz`` beside the image, names from the
``labels`` map of its ``meta.json``), it is resampled with nearest neighbour onto the same
training grid and kept with the volume (UAE semantic head training, see
:func:`uae_ray.train.losses.prototype_loss`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from uae_ray.data.manifest import manifest_rows
from uae_ray.models.config import hu_to_normalised
from uae_ray.volume import Grid, parse_modality, prepare_volume, read_image, read_labels, resample_to_grid

logger = logging.getLogger(__name__)

#: Voxels brighter than this (HU) count as body (lung parenchyma included, outside air not).
BODY_HU = -900.0

#: MR body rule, on the normalised scale: a valid voxel brighter than this is body.
#: ``normalize_mr`` maps the 0.2th percentile of the (foreground) MR voxels to -1, so the
#: background and the darkest 0.2 % of the body sit at -1 and noisy background just above it.
#: The level keeps the lowest 5 % of the [-1, 1] window out (on the visible cases this removes
#: the outside air of ``ts_example_mr`` and the dark background of the STS crops, 25-29 % of the
#: field of view, and keeps soft tissue and fat). A CT HU level would be meaningless here.
MR_BODY_LEVEL = -0.9


def body_level(modality: str) -> float:
    """Normalised intensity above which a valid voxel counts as body, per modality.

    CT: :data:`BODY_HU` on the CT scale (about -0.939); MR: :data:`MR_BODY_LEVEL`.
    """
    return hu_to_normalised(BODY_HU) if parse_modality(modality, "body_level") == "CT" else MR_BODY_LEVEL


@dataclass(frozen=True)
class CaseInfo:
    """One row of ``manifest.csv`` (the columns the trainer uses).

    Attributes:
        case_id: Case identifier.
        modality: ``"CT"`` or ``"MR"``.
        patient: Opaque patient id (scans of one patient share it).
        image_path: Path of the case's ``image.nii.gz``.
        region: Body region from the manifest (``""`` when absent).
    """

    case_id: str
    modality: str
    patient: str
    image_path: Path
    region: str = ""

    @property
    def labels_path(self) -> Path:
        """``labels.nii.gz`` beside the image (may not exist)."""
        return self.image_path.with_name("labels.nii.gz")

    @property
    def meta_path(self) -> Path:
        """``meta.json`` beside the image (may not exist)."""
        return self.image_path.with_name("meta.json")


@dataclass
class TrainVolume:
    """One prepared training volume.

    Attributes:
        case_id: Case identifier from the manifest.
        data: (2, Z, Y, X) float32 tensor: normalised intensity + 1 (air 0, so zero padding
            outside the array is air) and validity (0/1).
        centres: (K, 3) float64 volume voxels (x, y, z) in the body, used as view centres.
        modality: ``"CT"`` or ``"MR"``.
        patient: Patient id from the manifest (``""`` when unknown: the volume is its own patient).
        grid: The prepared volume's model grid (identity direction, isotropic spacing; voxel
            ``(x, y, z)`` of ``data`` lies at ``grid.index_to_world``); ``None`` for synthetic
            volumes without a world frame.
        labels: (Z, Y, X) int16 organ label map on the same grid as ``data`` (nearest-neighbour
            resampled; 0 = unlabelled, also outside the field of view), or ``None`` when the
            case has none.
        label_names: Label id -> organ name (from ``meta.json``; ``"label_<id>"`` when unnamed).
        region: Body region from the manifest (``""`` when unknown; used to balance sampling).
    """

    case_id: str
    data: torch.Tensor
    centres: np.ndarray
    modality: str = "CT"
    patient: str = ""
    grid: Grid | None = None
    labels: torch.Tensor | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    region: str = ""

    @property
    def has_labels(self) -> bool:
        """Whether the volume has an organ label map with at least one labelled voxel."""
        return self.labels is not None and bool(self.label_names)

    @property
    def patient_key(self) -> str:
        """Patient id, or the case id when the patient is unknown."""
        return self.patient or self.case_id

    @property
    def body_level(self) -> float:
        """Normalised body threshold of this volume's modality (see :func:`body_level`)."""
        return body_level(self.modality)

    def world_grid(self) -> Grid:
        """The model grid; raises ``ValueError`` for a volume without world geometry."""
        if self.grid is None:
            raise ValueError(f"{self.case_id}: training volume has no world geometry")
        return self.grid


def fetch_data(data: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder with ``manifest.csv`` and the case images for a data folder or URI.

    Local folders are returned as they are. For an ``s3://`` prefix, ``manifest.csv`` and each
    listed case's ``image.nii.gz`` are downloaded once into ``cache_dir`` (default
    ``~/.cache/uae-ray/train-data/<hash of the URI>``; a file already there with the same size
    is not fetched again), so every Ray Train worker reads the training scans from object
    storage. A case's ``labels.nii.gz`` and ``meta.json`` are fetched too where they exist.
    """
    from uae_ray.storage import is_s3, join, uri_hash
    from uae_ray.storage.objects import download, exists, size

    text = str(data)
    if not is_s3(text):
        return Path(text)
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "uae-ray" / "train-data" / uri_hash(text)
    download(join(text, "manifest.csv"), cache / "manifest.csv")
    paths = [r["path"] for r in manifest_rows(cache)]
    for rel in paths:
        for name in ("image.nii.gz", "labels.nii.gz", "meta.json"):
            src, dest = join(text, rel, name), cache / rel / name
            if name != "image.nii.gz" and not exists(src):
                continue  # labels and meta.json are optional
            if not (dest.is_file() and dest.stat().st_size == size(src)):
                download(src, dest)
    logger.info("training data %s: %d cases cached in %s", text, len(paths), cache)
    return cache


def read_manifest(data_dir: str | Path, modalities: Iterable[str] | None = None) -> list[CaseInfo]:
    """Rows of ``<data_dir>/manifest.csv``, optionally restricted to some modalities, by case id.

    Args:
        data_dir: Folder holding ``manifest.csv`` (columns ``case_id,modality,region,patient,...,path``).
        modalities: Modalities to keep (case-insensitive); ``None``: all.

    Returns:
        The :class:`CaseInfo` rows sorted by case id.
    """
    data_dir = Path(data_dir)
    keep = None if modalities is None else {m.upper() for m in modalities}
    rows = [
        CaseInfo(r["case_id"], r["modality"], r["patient"], data_dir / r["path"] / "image.nii.gz", r.get("region") or "")
        for r in manifest_rows(data_dir)
        if keep is None or r["modality"] in keep
    ]
    return sorted(rows, key=lambda c: c.case_id)


def list_cases(data_dir: str | Path, modality: str = "CT") -> list[tuple[str, Path]]:
    """Cases of ``<data_dir>/manifest.csv`` with the given modality, sorted by case id.

    Args:
        data_dir: Folder holding ``manifest.csv`` (columns ``case_id,modality,...,path``).
        modality: Modality to keep.

    Returns:
        ``[(case_id, image_path), ...]``.
    """
    return [(c.case_id, c.image_path) for c in read_manifest(data_dir, (modality,))]


def read_label_names(meta_path: str | Path) -> dict[int, str]:
    """Label id -> name from the ``labels`` map of a case's ``meta.json`` (``{}`` when absent)."""
    path = Path(meta_path)
    if not path.is_file():
        return {}
    labels = json.loads(path.read_text(encoding="utf-8")).get("labels") or {}
    return {int(k): str(v) for k, v in labels.items()}


def prepare_labels(labels_path: str | Path, grid: Grid, valid: np.ndarray) -> np.ndarray:
    """A label map resampled (nearest neighbour, world space) onto a prepared volume's grid.

    Args:
        labels_path: Label image (any integer pixel type, any geometry overlapping the grid).
        grid: The training grid (``PreparedVolume.grid``).
        valid: (Z, Y, X) bool validity of the prepared volume; labels outside it are set to 0.

    Returns:
        (Z, Y, X) int16 array.
    """
    image = read_labels(labels_path)  # integer, >= 0; VolumeError otherwise
    arr = sitk.GetArrayFromImage(resample_to_grid(image, grid, sitk.sitkNearestNeighbor, default_value=0))
    if arr.max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError(f"{labels_path}: label ids must be at most 32767")
    return np.where(valid, arr, 0).astype(np.int16)


def body_crop(body: np.ndarray, grid: Grid, margin_vox: int | None) -> tuple[tuple[slice, slice, slice], Grid]:
    """The (z, y, x) slices of the body's bounding box plus a margin, and the cropped grid.

    Args:
        body: (Z, Y, X) bool body mask on ``grid`` (identity direction).
        grid: Its grid.
        margin_vox: Margin in voxels; ``None`` (or no body voxel): the whole grid.
    """
    full = tuple(slice(0, n) for n in body.shape)
    if margin_vox is None or not body.any():
        return full, grid  # type: ignore[return-value]
    idx = np.argwhere(body)
    lo = np.maximum(idx.min(axis=0) - margin_vox, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin_vox, body.shape)
    lo_xyz = lo[::-1].astype(np.float64)
    origin = np.asarray(grid.origin) + lo_xyz * np.asarray(grid.spacing)  # identity direction
    cropped = Grid(tuple(origin), grid.spacing, grid.direction, tuple(int(v) for v in (hi - lo)[::-1]))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), cropped  # type: ignore[return-value]


def prepare_train_volume(
    case_id: str,
    path: Path,
    spacing_mm: float = 2.0,
    max_centres: int = 20000,
    seed: int = 0,
    modality: str = "CT",
    patient: str = "",
    labels_path: Path | None = None,
    label_names: dict[int, str] | None = None,
    crop_margin_vox: int | None = 8,
) -> TrainVolume:
    """Read, prepare (2 mm, normalised as at inference) and index one volume for view sampling.

    The prepared volume is cropped to the bounding box of its body voxels plus
    ``crop_margin_vox`` (``None``: not cropped), with the grid's origin moved to match, so a
    head in a 50 cm field of view keeps a fifth of the memory (views reaching past the crop see
    air, as outside any field of view).

    View centres are (at most ``max_centres`` random) body voxels: valid voxels brighter than
    :func:`body_level` of the modality (all valid voxels when none is). With ``labels_path``
    (an existing file) the label map is prepared on the same grid (:func:`prepare_labels`);
    only ids that occur in it are kept in ``label_names``.
    """
    mod = parse_modality(modality, "prepare_train_volume")
    pv = prepare_volume(read_image(path), mod, spacing_mm=spacing_mm, pad_multiple=1)
    arr = np.asarray(pv.array, dtype=np.float32)
    valid = np.asarray(pv.valid, dtype=bool)
    body = valid & (arr > body_level(mod))
    crop, grid = body_crop(body, pv.grid, crop_margin_vox)
    arr, valid, body = arr[crop], valid[crop], body[crop]
    zyx = np.argwhere(body)
    if len(zyx) == 0:
        zyx = np.argwhere(valid)
    rng = np.random.default_rng(seed)
    if len(zyx) > max_centres:
        zyx = zyx[rng.choice(len(zyx), max_centres, replace=False)]
    data = torch.from_numpy(np.stack([arr + 1.0, valid.astype(np.float32)]))
    labels, names = None, {}
    if labels_path is not None and Path(labels_path).is_file():
        lab = prepare_labels(labels_path, grid, valid)
        present = [int(i) for i in np.unique(lab) if i > 0]
        names = {i: (label_names or {}).get(i, f"label_{i}") for i in present}
        labels = torch.from_numpy(lab)
    logger.info("prepared %s (%s): grid %s, %d body voxels, %d labels", case_id, mod, grid.size, int(body.sum()),
                len(names))
    return TrainVolume(case_id, data, zyx[:, ::-1].astype(np.float64).copy(), mod, patient, grid, labels, names)


def load_volumes(
    data_dir: str | Path,
    modalities: Sequence[str] = ("CT", "MR"),
    spacing_mm: float = 2.0,
    case_ids: Iterable[str] | None = None,
    labels: bool = True,
) -> list[TrainVolume]:
    """Prepare every case of the given modalities of a data folder (sorted by case id).

    Args:
        data_dir: Folder with ``manifest.csv``, or an ``s3://`` prefix holding one
            (see :func:`fetch_data`).
        modalities: Modalities to load (``"CT"``, ``"MR"``).
        spacing_mm: Model grid spacing.
        case_ids: Optional subset of case ids to load (others are skipped).
        labels: Also prepare each case's ``labels.nii.gz`` (where present) on the training grid.

    Raises:
        ValueError: no case matches.
    """
    wanted = None if case_ids is None else set(case_ids)
    data_dir = fetch_data(data_dir)
    cases = [c for c in read_manifest(data_dir, modalities) if wanted is None or c.case_id in wanted]
    if not cases:
        raise ValueError(f"{data_dir}: no {'/'.join(modalities)} case in manifest.csv")
    volumes = []
    for c in cases:
        vol = prepare_train_volume(
            c.case_id, c.image_path, spacing_mm, modality=c.modality, patient=c.patient,
            labels_path=c.labels_path if labels else None, label_names=read_label_names(c.meta_path) if labels else None,
        )
        vol.region = c.region
        volumes.append(vol)
    return volumes


def load_ct_volumes(data_dir: str | Path, spacing_mm: float = 2.0) -> list[TrainVolume]:
    """Prepare every CT case of a data folder (see :func:`load_volumes`)."""
    return load_volumes(data_dir, ("CT",), spacing_mm)
