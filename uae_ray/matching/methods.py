"""One entry point for every matching method (``--method nn|fixed-point``)."""

from __future__ import annotations

import numpy as np

from uae_ray.matching.embed import EmbeddingMaps
from uae_ray.matching.fixed_point import FixedPointConfig, FixedPointMatcher
from uae_ray.matching.nn import Matcher, match_points
from uae_ray.matching.result import MatchResult

METHODS = ("nn", "fixed-point")
DEFAULT_METHOD = "fixed-point"


def find_points(
    template: EmbeddingMaps,
    points: np.ndarray,
    target: EmbeddingMaps,
    method: str = DEFAULT_METHOD,
    config: FixedPointConfig | None = None,
    guess: np.ndarray | None = None,
    window_mm: float | None = None,
) -> MatchResult:
    """Find template world points (N, 3) in a target with the named method.

    ``nn``: nearest neighbour on the averaged global+local cosine maps (never abstains).
    ``fixed-point``: UAE fixed-point matching with abstention (:mod:`uae_ray.matching.fixed_point`).
    ``guess`` (N, 3) and ``window_mm``: search only within a cube of that half-size around the
    predicted target positions (and, for the round trip, around the template points);
    ``fixed-point`` with ``window_mm`` and no guess starts from the global embeddings' best voxel.

    Raises:
        ValueError: For an unknown method.
    """
    if method == "nn":
        if guess is None:
            xyz, scores = match_points(template, points, target)
        else:
            xyz, scores = Matcher().set_target(target).predict(template, points, guess, window_mm)
        n = len(xyz)
        return MatchResult(xyz, scores, np.ones(n, dtype=bool), np.full(n, np.nan))
    if method == "fixed-point":
        return FixedPointMatcher(template, target, config).predict(points, guess, window_mm)
    raise ValueError(f"unknown matching method {method!r}; expected one of {', '.join(METHODS)}")


__all__ = ["DEFAULT_METHOD", "METHODS", "find_points"]
