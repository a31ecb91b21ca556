"""Batch items of the embedding training: two views with a known correspondence, and how
patients are drawn (one item per patient, regions balanced)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from uae_ray.train.augment import ViewGeometry
from uae_ray.train.data import TrainVolume
from uae_ray.train.losses import BACKGROUND, IGNORE


@dataclass
class ViewPair:
    """One batch item: two views with a known correspondence.

    Attributes:
        views: Geometries of views A and B in one common volume frame (the volume's own voxels;
            for a CT-MR pair the CT's voxels), so ``views[1].from_volume(views[0].to_volume(u))``
            is the exact correspondence and volume-voxel distances times the spacing are mm.
        raw: Per view (2, D, H, W): normalised intensity before augmentation, validity.
        inputs: Per view (1, D, H, W): augmented intensity (the network input).
        body_levels: Per view, the body threshold of its source modality (anchor masks).
        case_ids: Per view, the source case.
        labels: Per view, the organ label map on the semantic (local) map grid, both in view
            A's volume's label ids (view B of a CT-MR pair is mapped by organ name; labels with
            no counterpart are :data:`~uae_ray.train.losses.IGNORE`); ``None`` when the item
            has no labels or the semantic loss is off.
        label_names: Label id -> organ name for ``labels``.
    """

    views: tuple[ViewGeometry, ViewGeometry]
    raw: tuple[torch.Tensor, torch.Tensor]
    inputs: tuple[torch.Tensor, torch.Tensor]
    body_levels: tuple[float, float]
    case_ids: tuple[str, str]
    labels: tuple[torch.Tensor, torch.Tensor] | None = None
    label_names: dict[int, str] = field(default_factory=dict)


def remap_labels(labels: torch.Tensor, src_names: dict[int, str], dst_names: dict[int, str]) -> torch.Tensor:
    """Label ids of one scan mapped to another scan's ids by organ name.

    Args:
        labels: Integer label tensor in the ``src_names`` id space.
        src_names: Its id -> name map.
        dst_names: The target id -> name map.

    Returns:
        Long tensor: 0 stays 0, a named organ gets the target's id, anything else
        :data:`~uae_ray.train.losses.IGNORE`.
    """
    by_name = {n: i for i, n in dst_names.items()}
    size = max([int(labels.max()) if labels.numel() else 0, *src_names]) + 1
    lookup = torch.full((size,), IGNORE, dtype=torch.long)
    lookup[BACKGROUND] = BACKGROUND
    for i, n in src_names.items():
        if n in by_name:
            lookup[i] = by_name[n]
    return lookup[labels.long()]


def patient_groups(volumes: Sequence[TrainVolume]) -> list[list[TrainVolume]]:
    """Volumes grouped by patient (first-appearance order); unknown patients are singletons."""
    groups: dict[str, list[TrainVolume]] = {}
    for v in volumes:
        groups.setdefault(v.patient_key, []).append(v)
    return list(groups.values())


def region_weights(groups: Sequence[Sequence[TrainVolume]], balance: float) -> list[float] | None:
    """Sampling weight of each patient group, ``n_region ** -balance`` (``None`` for 0: uniform)."""
    if balance <= 0:
        return None
    regions = [g[0].region for g in groups]
    counts = {r: regions.count(r) for r in set(regions)}
    return [counts[r] ** -float(balance) for r in regions]


def view_body_mask(raw: torch.Tensor, stride: tuple[int, int, int], level: float) -> torch.Tensor:
    """(z, y, x) bool on a (z, y, x) ``stride`` subsampling of a raw view (2, D, H, W): valid and
    in the body (intensity above the source modality's body ``level``)."""
    sub = raw[:, :: stride[0], :: stride[1], :: stride[2]]
    return (sub[1] > 0.99) & (sub[0] > level)
