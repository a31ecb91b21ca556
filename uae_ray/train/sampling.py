"""Point sampling and negative mining between two views of one volume.

Map voxel ``j`` (x, y, z) of a map of stride ``s`` corresponds to view voxel ``s * j``; view
voxels map to source-volume voxels through :class:`~uae_ray.train.augment.ViewGeometry`.
Distances are in mm (source voxels times the isotropic source spacing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from uae_ray.train.augment import ViewGeometry, sample_at, voxel_grid


@dataclass
class Correspondences:
    """Anchors in view A and their exact positions in view B.

    Attributes:
        anchor_idx: (n, 3) long, integer map voxels (x, y, z) in A's map.
        target_pos: (n, 3) float, continuous map positions (x, y, z) in B's map.
        volume_pos: (n, 3) float, the common position in source-volume voxels (x, y, z).
    """

    anchor_idx: torch.Tensor
    target_pos: torch.Tensor
    volume_pos: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchor_idx.shape[0])


Stride = int | tuple[int, int, int]  # one stride, or one per axis (z, y, x)


def stride_xyz(stride: Stride) -> torch.Tensor:
    """A map stride as a float64 (3,) tensor in x, y, z order (to scale xyz positions)."""
    zyx = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
    return torch.tensor(zyx[::-1], dtype=torch.float64)


def map_volume_positions(view: ViewGeometry, map_shape: tuple[int, int, int], stride: Stride) -> torch.Tensor:
    """Source-volume voxel positions (M, 3) xyz of every voxel of a view's map (C-order z, y, x)."""
    return view.to_volume_torch(stride_xyz(stride) * voxel_grid(map_shape, torch.float64)).reshape(-1, 3)


def find_correspondences(
    view_a: ViewGeometry,
    view_b: ViewGeometry,
    map_shape: tuple[int, int, int],
    stride: Stride,
    anchor_ok: torch.Tensor,
    valid_b: torch.Tensor,
    n_points: int,
    rng: np.random.Generator,
) -> Correspondences:
    """Sample anchors in A's map whose corresponding location lies inside B's map.

    Args:
        view_a: Geometry of view A.
        view_b: Geometry of view B.
        map_shape: Map size (z, y, x) (same for both views).
        stride: Map stride relative to the view voxels (one, or one per axis z, y, x).
        anchor_ok: (z, y, x) bool on A's map: allowed anchors (valid, in the body).
        valid_b: (D, H, W) float in [0, 1] on view B's voxels: inside the source field of view.
        n_points: Maximum number of anchors.
        rng: Random generator.

    Returns:
        :class:`Correspondences` with up to ``n_points`` entries.
    """
    vol = map_volume_positions(view_a, map_shape, stride)  # (M, 3)
    step = stride_xyz(stride)
    pos_b = view_b.from_volume_torch(vol) / step  # B map coords
    hi = torch.tensor(map_shape[::-1], dtype=pos_b.dtype) - 1
    inside = ((pos_b >= 0) & (pos_b <= hi)).all(dim=1) & anchor_ok.reshape(-1)
    cand = torch.nonzero(inside).reshape(-1)
    if len(cand) == 0:
        empty = torch.zeros(0, 3)
        return Correspondences(empty.long(), empty.double(), empty.double())
    vb = sample_at(valid_b[None].float(), (pos_b[cand] * step).float(), pad_value=0.0)[0]
    cand = cand[vb > 0.99]
    if len(cand) > n_points:
        cand = cand[torch.from_numpy(rng.choice(len(cand), n_points, replace=False))]
    z, y, x = torch.unravel_index(cand, map_shape)
    return Correspondences(torch.stack([x, y, z], dim=1), pos_b[cand], vol[cand])


def mine_negatives(
    rank: torch.Tensor, allowed: torch.Tensor, k_hard: int, k_random: int, generator: torch.Generator
) -> torch.Tensor:
    """Pick hard (highest ``rank``) and random negatives among allowed candidates.

    Args:
        rank: (n, M) ranking score (higher = harder), detached.
        allowed: (n, M) bool: candidate may be used as a negative.
        k_hard: Hard negatives per anchor.
        k_random: Random negatives per anchor (uniform among the allowed).
        generator: Torch RNG for the random draw.

    Returns:
        (n, k) long indices into M with k = k_hard + k_random (clipped to M); rows with fewer
        allowed candidates repeat disallowed ones, so mask with ``allowed.gather``.
    """
    m = rank.shape[1]
    parts = []
    if k_hard > 0:
        parts.append(rank.masked_fill(~allowed, float("-inf")).topk(min(k_hard, m), dim=1).indices)
    if k_random > 0:
        r = torch.rand(rank.shape, generator=generator).to(rank.device).masked_fill(~allowed, -1.0)
        parts.append(r.topk(min(k_random, m), dim=1).indices)
    return torch.cat(parts, dim=1)
