"""Embedding maps and nearest-neighbour matching (no Ray/Triton/S3 imports)."""

from uae_ray.matching.embed import Embedder, EmbeddingMaps, embed_image, embed_prepared, map_grid, maps_from_outputs
from uae_ray.matching.nn import Matcher, match_points, sample_embeddings

__all__ = [
    "Embedder",
    "EmbeddingMaps",
    "Matcher",
    "embed_image",
    "embed_prepared",
    "map_grid",
    "maps_from_outputs",
    "match_points",
    "sample_embeddings",
]
