"""Training data: the CT cases of a data folder, prepared once at 2 mm and cached in memory."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uae_ray.models.config import hu_to_normalised
from uae_ray.volume import prepare_volume, read_image

logger = logging.getLogger(__name__)

#: Voxels brighter than this (HU) count as body (lung parenchyma included, outside air not).
BODY_HU = -900.0


@dataclass
class TrainVolume:
    """One prepared training volume.

    Attributes:
        case_id: Case identifier from the manifest.
        data: (2, Z, Y, X) float32 tensor: normalised intensity + 1 (air 0, so zero padding
            outside the array is air) and validity (0/1).
        centres: (K, 3) float64 volume voxels (x, y, z) in the body, used as view centres.
    """

    case_id: str
    data: torch.Tensor
    centres: np.ndarray


def list_cases(data_dir: str | Path, modality: str = "CT") -> list[tuple[str, Path]]:
    """Cases of ``<data_dir>/manifest.csv`` with the given modality, sorted by case id.

    Args:
        data_dir: Folder holding ``manifest.csv`` (columns ``case_id,modality,...,path``).
        modality: Modality to keep.

    Returns:
        ``[(case_id, image_path), ...]``.
    """
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found")
    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["modality"].upper() == modality.upper()]
    return sorted((r["case_id"], data_dir / r["path"] / "image.nii.gz") for r in rows)


def prepare_train_volume(case_id: str, path: Path, spacing_mm: float = 2.0, max_centres: int = 20000, seed: int = 0) -> TrainVolume:
    """Read, prepare (2 mm, normalised) and index one CT for view sampling."""
    pv = prepare_volume(read_image(path), "CT", spacing_mm=spacing_mm, pad_multiple=1)
    arr = np.asarray(pv.array, dtype=np.float32)
    valid = np.asarray(pv.valid, dtype=bool)
    body = valid & (arr > hu_to_normalised(BODY_HU))
    zyx = np.argwhere(body)
    if len(zyx) == 0:
        zyx = np.argwhere(valid)
    rng = np.random.default_rng(seed)
    if len(zyx) > max_centres:
        zyx = zyx[rng.choice(len(zyx), max_centres, replace=False)]
    data = torch.from_numpy(np.stack([arr + 1.0, valid.astype(np.float32)]))
    logger.info("prepared %s: grid %s, %d body voxels", case_id, pv.grid.size, int(body.sum()))
    return TrainVolume(case_id, data, zyx[:, ::-1].astype(np.float64).copy())


def load_ct_volumes(data_dir: str | Path, spacing_mm: float = 2.0) -> list[TrainVolume]:
    """Prepare every CT case of a data folder (see :func:`list_cases`)."""
    cases = list_cases(data_dir, "CT")
    if not cases:
        raise ValueError(f"{data_dir}: no CT case in manifest.csv")
    return [prepare_train_volume(cid, path, spacing_mm) for cid, path in cases]
