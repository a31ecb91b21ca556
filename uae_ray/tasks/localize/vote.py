"""Voting the per-support estimates of an organ's six extreme points into one box."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uae_ray.tasks.localize.boxes import (
    box_iou,
    CUT_POLICIES,
    DEFAULT_CUT_POLICY,
    OrganBox,
    STATUS_NO_SUPPORT,
    STATUS_NOT_FOUND,
    STATUS_OK,
    STATUS_OUTSIDE,
    STATUS_PARTIAL,
    SupportEstimate,
)
from uae_ray.tasks.support import box_of_points, EXTREME_NAMES


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median of 1D values (lower median on ties)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.clip(np.asarray(weights, dtype=np.float64), 1e-6, None)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    return float(v[np.searchsorted(cw, 0.5 * cw[-1])])


def clip_box(box: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """Clips a box to a field-of-view box.

    Returns:
        ``(clipped, was_clipped, empty)``; ``empty`` when the box lies wholly outside.
    """
    lo = np.maximum(box[:3], fov[:3])
    hi = np.minimum(box[3:], fov[3:])
    empty = bool(np.any(lo > hi))
    clipped = np.concatenate([lo, hi])
    tol = 1e-6
    was = bool(np.any(box[:3] < fov[:3] - tol) or np.any(box[3:] > fov[3:] + tol))
    return clipped, was, empty


def agreement(estimates: Sequence[SupportEstimate]) -> float:
    """Mean pairwise IoU of the supports' own boxes of an organ (NaN with fewer than two)."""
    boxes = [box_of_points(e.points) for e in estimates]
    ious = [box_iou(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]]
    return float(np.mean(ious)) if ious else float("nan")


def fov_fraction(box: np.ndarray, fov: np.ndarray) -> float:
    """Share of a box's volume inside the field-of-view box (an axis of zero extent counts 1 or 0:
    whether it lies inside)."""
    size = box[3:] - box[:3]
    inside = np.clip(np.minimum(box[3:], fov[3:]) - np.maximum(box[:3], fov[:3]), 0.0, None)
    flat = size <= 1e-3
    within = (box[:3] >= fov[:3] - 1e-6) & (box[3:] <= fov[3:] + 1e-6)
    share = np.where(flat, within.astype(np.float64), inside / np.where(flat, 1.0, size))
    return float(np.prod(np.clip(share, 0.0, 1.0)))


def vote(
    name: str,
    estimates: Sequence[SupportEstimate],
    fov: np.ndarray,
    method: str = "embedding",
    cut_policy: str = DEFAULT_CUT_POLICY,
) -> OrganBox:
    """Votes the supports' estimates into one box.

    Per extreme point: the per-coordinate weighted median (weights: scores) over the supports
    that found it (all supports when none did); a support whose organ is cut by its own field of
    view on that side is left out when another support is not. Box = per-axis min/max of the six
    voted points, clipped to ``fov`` (the target's box of voxel centres).

    Where *every* support's organ is cut on a side, the support says only that the organ goes
    on past that point: ``cut_policy="keep"`` (the default) keeps the estimate, ``"extend"``
    moves that side of the box to the target's field-of-view edge.

    Args:
        name: organ name.
        estimates: one per support that has the organ (at least one).
        fov: (6,) the target's field-of-view box.
        method: recorded in the result.
        cut_policy: one of :data:`CUT_POLICIES`.
    """
    if not estimates:
        return OrganBox.empty(name, STATUS_NO_SUPPORT, f"{name}: no support scan has this organ", method)
    pts = np.stack([e.points for e in estimates])  # (k, 6, 3)
    scores = np.stack([e.scores for e in estimates]).astype(np.float64)  # (k, 6)
    found = np.stack([e.found for e in estimates])  # (k, 6)
    cut = np.stack([e.cut for e in estimates])
    voted = np.zeros((6, 3))
    used_scores = []
    for j in range(6):
        use = found[:, j].copy() if found[:, j].any() else np.ones(len(estimates), dtype=bool)
        if (use & ~cut[:, j]).any():
            use &= ~cut[:, j]
        w = np.clip(scores[use, j], 0.0, None) + 1e-3
        voted[j] = [weighted_median(pts[use, j, c], w) for c in range(3)]
        used_scores.append(scores[use, j].mean())
    raw = box_of_points(voted)
    if cut_policy not in CUT_POLICIES:
        raise ValueError(f"unknown cut policy {cut_policy!r}; expected one of {', '.join(CUT_POLICIES)}")
    if cut_policy == "extend":
        for j in np.flatnonzero(cut.all(axis=0)):  # EXTREME_NAMES order: xmin, xmax, ymin, ...
            axis, high = divmod(int(j), 2)
            col = axis + 3 * high
            raw[col] = fov[col]
    box, clipped, empty = clip_box(raw, fov)
    verified = np.array([e.verified for e in estimates], dtype=np.float64)
    n_found = int(found.any(axis=0).sum())
    score = float(np.mean(used_scores))
    if empty:
        status = STATUS_OUTSIDE
        message = f"{name}: the localized box lies outside the target's field of view"
    elif n_found == 0:
        status = STATUS_NOT_FOUND
        message = f"{name}: not found by any support (the organ is likely outside the target's field of view)"
    elif clipped:
        status, message = STATUS_PARTIAL, f"{name}: box clipped to the target's field of view"
    else:
        status, message = STATUS_OK, ""
    all_cut = [EXTREME_NAMES[j] for j in np.flatnonzero(cut.all(axis=0))]
    if all_cut and not empty:
        note = (f"every support's {name} is cut by its field of view at {', '.join(all_cut)}: "
                + ("those sides moved to the target's view edge" if cut_policy == "extend"
                   else "the box keeps the supports' extent there; the organ may go on"))
        message = f"{message}; {note}" if message else f"{name}: {note}"
    return OrganBox(
        verified=float(np.nanmean(verified)) if np.isfinite(verified).any() else float("nan"),
        agreement=agreement(estimates),
        fov_fraction=fov_fraction(raw, fov),
        name=name,
        box=box if not empty else raw,
        raw_box=raw,
        points=voted,
        score=score,
        found=n_found >= 3 and not empty,
        status=status,
        message=message,
        method=method,
        n_supports=len(estimates),
    )
