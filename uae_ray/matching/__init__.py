"""Embedding maps and point matching: nearest neighbour and fixed-point (no Ray/Triton/S3 imports)."""

from uae_ray.matching.embed import Embedder, EmbeddingMaps, embed_image, embed_prepared, map_grid, maps_from_outputs, prepare_for
from uae_ray.matching.fit import PointMap, fit_points, well_spread
from uae_ray.matching.fixed_point import FixedPointConfig, FixedPointMatcher, match_points_fixed
from uae_ray.matching.methods import DEFAULT_METHOD, METHODS, find_points
from uae_ray.matching.nn import Matcher, coarse_points, global_valid, match_points, sample_embeddings
from uae_ray.matching.result import MatchResult

__all__ = [
    "DEFAULT_METHOD",
    "Embedder",
    "EmbeddingMaps",
    "FixedPointConfig",
    "FixedPointMatcher",
    "METHODS",
    "MatchResult",
    "Matcher",
    "PointMap",
    "coarse_points",
    "embed_image",
    "embed_prepared",
    "prepare_for",
    "find_points",
    "fit_points",
    "global_valid",
    "map_grid",
    "maps_from_outputs",
    "match_points",
    "match_points_fixed",
    "sample_embeddings",
    "well_spread",
]
