"""Organ boxes: methods, statuses, the per-support estimate and the box result, IoU and wall distance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


#: Localizers of ``uae-ray localize --method``.
LOCALIZE_METHODS = ("embedding", "medlam")
#: Per-support modes of the embedding localizer.
EMBEDDING_MODES = ("extremes", "transfer")
#: Defaults of ``uae-ray localize`` (chosen by ``uae-ray bench localization``, see README).
DEFAULT_LOCALIZE_METHOD = "embedding"
DEFAULT_EMBEDDING_MODE = "transfer"
#: What a side that every support's organ is cut on becomes (see :func:`vote`). ``keep``: the
#: segmentation benchmark's SPL Dice 0.34 vs 0.31 with ``extend`` (README).
CUT_POLICIES = ("keep", "extend")
DEFAULT_CUT_POLICY = "keep"
#: Coarse-to-fine search windows of the embedding localizer (half-size, mm; 0: whole-scan
#: searches). Head-neck, 20 test patients, 5 supports: box IoU 0.50 vs 0.51, 15 s vs 80 s per
#: scan (``uae-ray bench localization``, docs/benchmarks.md).
DEFAULT_WINDOW_MM = 32.0

#: Row statuses of the boxes CSV (``status`` column).
STATUS_OK = "ok"  # box inside the target's field of view
STATUS_PARTIAL = "partial_fov"  # box clipped to the field of view (organ partly outside)
STATUS_OUTSIDE = "outside_fov"  # the organ is not in the target's field of view
STATUS_NOT_FOUND = "not_found"  # no estimate passed its check: the organ is likely not in view
STATUS_NO_SUPPORT = "no_support"  # no support scan has this organ
STATUSES = (STATUS_OK, STATUS_PARTIAL, STATUS_OUTSIDE, STATUS_NOT_FOUND, STATUS_NO_SUPPORT)


@dataclass
class SupportEstimate:
    """One support's estimate of an organ's six extreme points in the target.

    Attributes:
        support: the support's name (``IMAGE:LABELS``).
        points: (6, 3) estimated extreme points in the target (``EXTREME_NAMES`` order), LPS mm.
        scores: (6,) similarity of each estimate (higher is better).
        found: (6,) bool: False where the matcher abstained (likely outside the target's view).
        cut: (6,) bool: the support's organ touches its own image border on that side, so the
            support's extreme point there is its field of view's edge, not the organ's.
        verified: ``transfer`` mode: share of the checked points that matched back onto the
            organ (NaN otherwise).
        chance: the share a random point of the support's view would give (organ volume over
            the view's volume, NaN when not computed).
    """

    support: str
    points: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    cut: np.ndarray
    verified: float = float("nan")
    chance: float = float("nan")


@dataclass
class OrganBox:
    """A localized organ (one row of the boxes CSV).

    Attributes:
        name: organ name.
        box: (6,) ``xmin, ymin, zmin, xmax, ymax, zmax`` clipped to the target's field of view
            (NaN when there is no estimate).
        raw_box: (6,) the box before clipping.
        points: (6, 3) voted extreme points (``EXTREME_NAMES`` order).
        score: mean similarity of the estimates used.
        found: at least half of the six points were found (not abstained on) by some support.
        status: one of :data:`STATUSES`.
        message: one line explaining a status other than ok ("" otherwise).
        method: the localizer (``embedding``, ``medlam``).
        n_supports: supports that had the organ.
        seconds: wall time spent on this organ (matching and voting; embedding excluded).
        verified: mean over the supports of the share of checked points that matched back onto
            the organ (``transfer`` mode; NaN otherwise).
        agreement: mean pairwise box IoU of the supports' own estimates (NaN with one support).
        fov_fraction: share of the voted (unclipped) box's volume inside the target's view.
    """

    name: str
    box: np.ndarray
    raw_box: np.ndarray
    points: np.ndarray
    score: float
    found: bool
    status: str
    message: str = ""
    method: str = "embedding"
    n_supports: int = 0
    seconds: float = 0.0
    verified: float = float("nan")
    agreement: float = float("nan")
    fov_fraction: float = float("nan")

    @classmethod
    def empty(cls, name: str, status: str, message: str, method: str) -> "OrganBox":
        nan6 = np.full(6, np.nan)
        return cls(name, nan6, nan6.copy(), np.full((6, 3), np.nan), float("nan"), False, status, message, method)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes ``(xmin, ymin, zmin, xmax, ymax, zmax)`` (0 when the union is empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    inter = np.prod(np.clip(np.minimum(a[3:], b[3:]) - np.maximum(a[:3], b[:3]), 0.0, None))
    va = np.prod(np.clip(a[3:] - a[:3], 0.0, None))
    vb = np.prod(np.clip(b[3:] - b[:3], 0.0, None))
    union = va + vb - inter
    return float(inter / union) if union > 0 else 0.0


def wall_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the six faces of ``|a - b|`` (mm)."""
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
