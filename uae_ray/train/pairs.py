"""Aligned CT-MR pairs (UAE cross-modality stage).

Scans of one patient with one CT and one MR that share a physical frame (e.g. the STS cases,
whose MR was co-registered and resampled onto the CT frame) give cross-modal view pairs with a
known correspondence: the identity in world space.

Geometry: every prepared training volume lives on its own 2 mm model grid with identity
direction, so world = ``origin + spacing * p`` for a voxel ``p`` (x, y, z). Between the CT grid
and the MR grid this is a pure translation in voxels::

    p_mr = p_ct + offset,   offset = (origin_ct - origin_mr) / spacing

A cross-modal view pair is drawn with the ordinary random-affine machinery in the **CT voxel
frame** (both :class:`~uae_ray.train.augment.ViewGeometry` objects are CT-frame geometries, so
the correspondence / negative-mining code works unchanged and distances are CT voxels times the
spacing = mm); view A is extracted from the CT, view B from the MR through
``view_b.translated(offset)``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch

from uae_ray.train.augment import ViewGeometry, sample_at
from uae_ray.train.data import TrainVolume

logger = logging.getLogger(__name__)


class _Case(Protocol):
    case_id: str
    modality: str
    patient: str


def find_ct_mr_pairs(cases: Iterable[_Case]) -> list[tuple[str, str]]:
    """``(ct_case_id, mr_case_id)`` for every patient with CT and MR scans (every CT x MR combination).

    Works on manifest rows (:class:`~uae_ray.train.data.CaseInfo`) and on
    :class:`~uae_ray.train.data.TrainVolume` alike; cases without a patient id are ignored.

    Returns:
        Sorted list of case-id pairs.
    """
    by_patient: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for c in cases:
        if c.patient:
            by_patient[c.patient][c.modality.upper()].append(c.case_id)
    return sorted((ct, mr) for mods in by_patient.values() for ct in mods.get("CT", []) for mr in mods.get("MR", []))


def grid_offset(src: TrainVolume, dst: TrainVolume) -> np.ndarray:
    """Voxel offset ``d`` with ``p_dst = p_src + d`` for the same world point, (3,) x, y, z.

    Raises:
        ValueError: a volume without world geometry, or grids that are not identity-direction
            grids of equal isotropic spacing.
    """
    gs, gd = src.world_grid(), dst.world_grid()
    for g in (gs, gd):
        if not np.allclose(g.direction_matrix, np.eye(3)):
            raise ValueError("cross-modal pairs need identity-direction model grids")
    if not np.allclose(gs.spacing, gd.spacing) or not np.allclose(gs.spacing, gs.spacing[0]):
        raise ValueError(f"grid spacings differ or are anisotropic: {gs.spacing} vs {gd.spacing}")
    return (np.asarray(gs.origin) - np.asarray(gd.origin)) / gs.spacing[0]


def overlap_centres(
    vol_a: TrainVolume, vol_b: TrainVolume, offset_vox: np.ndarray, max_centres: int, rng: np.random.Generator
) -> np.ndarray:
    """View centres (A voxels, (K, 3) x, y, z) in the body of A whose B position is body and valid.

    Candidates are A's own view centres (body voxels of A); one is kept when B, sampled
    trilinearly at ``p + offset_vox``, is fully valid and brighter than B's body level.
    """
    cand = np.asarray(vol_a.centres, dtype=np.float64)
    if len(cand) == 0:
        return cand.reshape(0, 3)
    at_b = sample_at(vol_b.data, torch.from_numpy(cand + offset_vox), pad_value=0.0)  # (2, K)
    keep = (at_b[1] > 0.99) & (at_b[0] - 1.0 > vol_b.body_level)
    out = cand[keep.numpy()]
    if len(out) > max_centres:
        out = out[rng.choice(len(out), max_centres, replace=False)]
    return out


@dataclass
class CrossModalPair:
    """A CT and an MR of one patient in one physical frame.

    Attributes:
        ct: The CT training volume (its voxel frame is the pair's common frame).
        mr: The MR training volume.
        offset_vox: (3,) ``p_mr = p_ct + offset_vox`` (x, y, z voxels of the 2 mm grids).
        centres: (K, 3) CT voxels (x, y, z) in the overlap: CT body, MR valid and body.
    """

    ct: TrainVolume
    mr: TrainVolume
    offset_vox: np.ndarray
    centres: np.ndarray

    @property
    def patient(self) -> str:
        """Patient id shared by both scans."""
        return self.ct.patient_key

    @property
    def case_ids(self) -> tuple[str, str]:
        """``(ct case id, mr case id)``."""
        return self.ct.case_id, self.mr.case_id

    def ct_to_mr(self, p_ct: np.ndarray) -> np.ndarray:
        """CT voxels (N, 3) -> MR voxels (N, 3) of the same world points."""
        return np.asarray(p_ct, dtype=np.float64) + self.offset_vox

    def view_in_mr(self, view: ViewGeometry) -> ViewGeometry:
        """A CT-frame view geometry re-expressed in the MR voxel frame (same world points)."""
        return view.translated(self.offset_vox)


def build_pairs(
    volumes: Sequence[TrainVolume], max_centres: int = 20000, min_centres: int = 32, seed: int = 0
) -> list[CrossModalPair]:
    """Aligned CT-MR pairs among prepared volumes (same patient, one CT and one MR).

    Volumes without a patient id or world geometry are ignored; pairs whose overlap has fewer
    than ``min_centres`` view centres are dropped (logged).
    """
    by_id = {v.case_id: v for v in volumes}
    rng = np.random.default_rng(seed)
    pairs = []
    for ct_id, mr_id in find_ct_mr_pairs(v for v in volumes if v.grid is not None):
        ct, mr = by_id[ct_id], by_id[mr_id]
        offset = grid_offset(ct, mr)
        centres = overlap_centres(ct, mr, offset, max_centres, rng)
        if len(centres) < min_centres:
            logger.warning("pair %s + %s: only %d overlap centres; not used", ct_id, mr_id, len(centres))
            continue
        logger.info("pair %s + %s: offset %s vox, %d overlap centres", ct_id, mr_id, np.round(offset, 3), len(centres))
        pairs.append(CrossModalPair(ct, mr, offset, centres))
    return pairs
