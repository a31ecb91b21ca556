"""The result of matching N query points into a target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MatchResult:
    """Matches of N query points.

    Attributes:
        points: (N, 3) world points in the target (LPS, mm).
        scores: (N,) similarity of the match (higher is better; cosine, at most 1).
        found: (N,) bool: False where the method abstains (the point is likely outside the
            target's field of view or the match is not confident); ``points`` then still holds
            the best estimate.
        consistency: (N,) fraction of the fixed-point cube that survived the round trips
            (NaN for plain nearest neighbour, which has no such check).
    """

    points: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    consistency: np.ndarray

    def __len__(self) -> int:
        return len(self.points)
