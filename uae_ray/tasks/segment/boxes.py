"""Per-slice 2D boxes from 3D boxes: WPL, SPL parts, ground-truth masks."""

from __future__ import annotations

import math
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from uae_ray.tasks.segment.segmenter import SliceBoxes, SPL_MAX_PARTS, SPL_MIN_PART_MM


def world_box_to_index(box: np.ndarray, image: sitk.Image) -> np.ndarray | None:
    """World box ``(xmin, ymin, zmin, xmax, ymax, zmax)`` (of voxel centres) -> index box
    ``(x0, y0, z0, x1, y1, z1)`` (inclusive ints, clipped to ``image``); None when it is empty,
    not finite or outside."""
    from uae_ray.volume import Grid

    box = np.asarray(box, dtype=np.float64)
    if box.shape != (6,) or not np.all(np.isfinite(box)):
        return None
    lo, hi = box[:3], box[3:]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = Grid.from_image(image).world_to_index(corners)
    size = np.asarray(image.GetSize())
    i0 = np.maximum(np.ceil(idx.min(axis=0) - 0.5 - 1e-6), 0).astype(int)
    i1 = np.minimum(np.floor(idx.max(axis=0) + 0.5 + 1e-6), size - 1).astype(int)
    if np.any(i1 < i0):
        return None
    return np.concatenate([i0, i1])


def wpl_slice_boxes(index_box: np.ndarray | None) -> SliceBoxes:
    """WPL: the box's 2D extent on every slice of its z range."""
    if index_box is None:
        return {}
    x0, y0, z0, x1, y1, z1 = (int(v) for v in index_box)
    b = np.array([x0, y0, x1, y1], dtype=np.float32)
    return {z: b.copy() for z in range(z0, z1 + 1)}


def spl_slice_boxes(part_boxes: Sequence[np.ndarray | None]) -> SliceBoxes:
    """SPL: per slice, the union of the boxes of the parts covering it; a slice between parts
    (inside the overall z range) takes the box of the nearest part."""
    parts = [np.asarray(p, dtype=int) for p in part_boxes if p is not None]
    if not parts:
        return {}
    z_lo = min(int(p[2]) for p in parts)
    z_hi = max(int(p[5]) for p in parts)
    out: SliceBoxes = {}
    for z in range(z_lo, z_hi + 1):
        cover = [p for p in parts if p[2] <= z <= p[5]]
        if not cover:
            dist = [min(abs(z - p[2]), abs(z - p[5])) for p in parts]
            cover = [parts[int(np.argmin(dist))]]
        c = np.stack(cover)
        out[z] = np.array([c[:, 0].min(), c[:, 1].min(), c[:, 3].max(), c[:, 4].max()], dtype=np.float32)
    return out


def mask_slice_boxes(mask_zyx: np.ndarray) -> SliceBoxes:
    """Each slice's own tight 2D box of a 3D mask (ground-truth slice prompts)."""
    out: SliceBoxes = {}
    for z in np.flatnonzero(mask_zyx.reshape(mask_zyx.shape[0], -1).any(axis=1)):
        ys, xs = np.nonzero(mask_zyx[z])
        out[int(z)] = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    return out


def mask_index_box(mask_zyx: np.ndarray) -> np.ndarray | None:
    """Index box ``(x0, y0, z0, x1, y1, z1)`` of a 3D mask (None when empty)."""
    zyx = np.argwhere(mask_zyx)
    if len(zyx) == 0:
        return None
    return np.concatenate([zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1]]).astype(int)


def n_parts(extent_mm: float, max_parts: int = SPL_MAX_PARTS, min_part_mm: float = SPL_MIN_PART_MM) -> int:
    """Parts an organ of this z extent is split into for SPL (1 .. ``max_parts``)."""
    if not math.isfinite(extent_mm) or extent_mm <= 0:
        return 1
    return int(np.clip(math.floor(extent_mm / min_part_mm), 1, max_parts))


def split_parts(world: np.ndarray, parts: int) -> list[np.ndarray]:
    """Splits an organ's voxel positions (N, 3) along world z into ``parts`` slabs of equal
    thickness (inferior first); returns the boolean selection of each (may be empty)."""
    z = np.asarray(world, dtype=np.float64)[:, 2]
    lo, hi = float(z.min()), float(z.max())
    edges = np.linspace(lo, hi, parts + 1)
    which = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, parts - 1)
    return [which == i for i in range(parts)]
