"""Embedding maps <-> Parquet objects (the EMBEDDINGS schema of :mod:`uae_ray.storage`), in
storage tiers.

Levels: ``local``, ``global``, ``valid``, ``body`` (the body mask, see
:func:`uae_ray.volume.body_mask`) and, for models with a UAE semantic head, ``semantic`` (on
the local grid). Files written before the semantic or body levels existed (or by a model
without a semantic head) read back with ``semantic=None`` / ``body=None``.

Storage tiers (``--storage-tier``; bytes and accuracy cost per tier in ``docs/benchmarks.md``):

===================  ===================================================================
``full``             every level float16 (the format of earlier releases)
``int8``             local, semantic and global int8 per channel
``int8-body``        as ``int8``, local and semantic kept inside the body mask only
``compact``          local and semantic as residual product-quantised codes (1 byte per
                     4 channels; int8 for a channel count not a multiple of 4) inside the
                     body only, global int8
``compact-hq``       as ``compact`` with a third residual stage on the local level (1.5
                     bytes per 4 channels); the default: the smallest measured tier within
                     the accuracy budget (+0.15 mm synthetic-warp MRE, +0.17 mm
                     cross-patient)
``compact-hq-s1``    as ``compact-hq`` with one residual stage on the semantic level (0.5
                     bytes per 4 channels): 7.4 MB per clinical CT, +0.20 mm synthetic-warp
                     but +1.13 mm cross-patient MRE (the semantic level's tail)
===================  ===================================================================

A body-only file reads back with ``valid`` restricted to the body (the matcher then never
proposes a voxel that was not stored). Lossy levels are re-normalised to unit length on
reading, as the matcher expects.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from uae_ray.matching import EmbeddingMaps, Embedder, global_valid
from uae_ray.storage import join
from uae_ray.storage.embeddings import RPQ_SUBSPACE_CHANNELS, embeddings_to_table, table_to_embeddings
from uae_ray.storage.parquet import read_table, write_table_atomic
from uae_ray.volume import Grid

#: tier -> embedding level -> (codec, body only)
TIERS: dict[str, dict[str, tuple[str, bool]]] = {
    "full": {"local": ("float16", False), "semantic": ("float16", False), "global": ("float16", False)},
    "int8": {"local": ("int8", False), "semantic": ("int8", False), "global": ("int8", False)},
    "int8-body": {"local": ("int8", True), "semantic": ("int8", True), "global": ("int8", False)},
    "compact": {"local": ("rpq", True), "semantic": ("rpq", True), "global": ("int8", False)},
    "compact-hq": {"local": ("rpq3", True), "semantic": ("rpq", True), "global": ("int8", False)},
    "compact-hq-s1": {"local": ("rpq3", True), "semantic": ("rpq1", True), "global": ("int8", False)},
}
DEFAULT_TIER = "compact-hq"
_BODY = "body"


def embeddings_uri(out: str, scan_id: str) -> str:
    """Where a scan's embeddings live under a cohort output prefix."""
    return join(out, "embeddings", f"{scan_id}.parquet")


def _grid_dict(grid: Grid) -> dict[str, Any]:
    return {k: list(v) for k, v in asdict(grid).items()}


def _grid(d: dict[str, Any]) -> Grid:
    return Grid(tuple(d["origin"]), tuple(d["spacing"]), tuple(d["direction"]), tuple(int(s) for s in d["size"]))


def check_tier(tier: str) -> str:
    """``tier`` if known, else a one-line ``ValueError`` naming the known tiers."""
    if tier not in TIERS:
        raise ValueError(f"unknown storage tier {tier!r}; known: {', '.join(TIERS)}")
    return tier


def _codec(codec: str, array: np.ndarray) -> str:
    """rpq where the channels split into groups of :data:`RPQ_SUBSPACE_CHANNELS`, else int8."""
    return "int8" if codec.startswith("rpq") and array.shape[0] % RPQ_SUBSPACE_CHANNELS else codec


def maps_to_table(scan_id: str, maps: EmbeddingMaps, tier: str = DEFAULT_TIER) -> pa.Table:
    """Encode a scan's maps in a storage tier as an EMBEDDINGS table."""
    spec = TIERS[check_tier(tier)]
    local_grid = _grid_dict(maps.local_grid)
    body = maps.valid if maps.body is None else maps.body & maps.valid
    levels = {
        "local": (maps.local, local_grid),
        "global": (maps.global_, _grid_dict(maps.global_grid)),
        "valid": (maps.valid, local_grid),
        _BODY: (body, local_grid),
    }
    if maps.semantic is not None:
        levels["semantic"] = (maps.semantic, local_grid)
    codecs = {level: _codec(spec[level][0], levels[level][0]) for level in levels if level in spec}
    masks = {level: _BODY for level in levels if level in spec and spec[level][1]}
    meta = {"scan_id": scan_id, "model_version": maps.model_version, "storage_tier": tier,
            "body_only": bool(masks)}
    return embeddings_to_table(levels, meta, codecs, masks)


def _unit(x: np.ndarray) -> np.ndarray:
    """(C, ...) float32, each vector over C scaled to unit length (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt((x * x).sum(axis=0, keepdims=True))
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def table_to_maps(table: pa.Table) -> EmbeddingMaps:
    """Decode a table of :func:`maps_to_table` (or of earlier releases) to float32 maps."""
    levels, meta = table_to_embeddings(table)

    def level(name: str) -> np.ndarray | None:
        if name not in levels:
            return None
        x = levels[name][0].astype(np.float32)
        return _unit(x) if levels[name][0].dtype != np.float16 else x

    valid = np.asarray(levels["valid"][0], dtype=bool)
    body = np.asarray(levels[_BODY][0], dtype=bool) if _BODY in levels else None
    if meta.get("body_only") and body is not None:
        valid = valid & body
    return EmbeddingMaps(
        local=level("local"),
        global_=level("global"),
        local_grid=_grid(levels["local"][1]),
        global_grid=_grid(levels["global"][1]),
        valid=valid,
        model_version=meta["model_version"],
        semantic=level("semantic"),
        body=body,
    )


def read_coarse(uri: str) -> tuple[np.ndarray, Grid, np.ndarray, str]:
    """Only the global level of a stored scan (and its masks), fetched with a row filter:
    ``(global (Cg, z, y, x) unit float32, its grid, valid (z, y, x) on the global grid,
    model_version)``. The coarse pass of ``cohort query`` reads this much of each file."""
    levels, meta = table_to_embeddings(read_table(uri, filters=[("level", "in", ["global", "valid", _BODY])]))
    valid = np.asarray(levels["valid"][0], dtype=bool)
    if meta.get("body_only") and _BODY in levels:
        valid = valid & np.asarray(levels[_BODY][0], dtype=bool)
    glob, grid = _unit(levels["global"][0]), _grid(levels["global"][1])
    local_spacing = levels["valid"][1]["spacing"]
    factor = tuple(int(round(g / l)) for g, l in zip(grid.spacing[::-1], local_spacing[::-1]))  # z, y, x
    return glob, grid, global_valid(valid, glob.shape[1:], factor), meta["model_version"]


def roundtrip(maps: EmbeddingMaps, tier: str) -> EmbeddingMaps:
    """``maps`` as a reader of a ``tier`` file sees them (encode + decode in memory; the
    benchmarks measure each tier's accuracy cost with this)."""
    return table_to_maps(maps_to_table("roundtrip", maps, tier))


class TierEmbedder:
    """An embedder whose maps come back as a reader of a ``tier`` file sees them (the
    benchmarks' ``--storage-tier``). Its version is ``<model version>+<tier>``."""

    def __init__(self, inner: Embedder, tier: str) -> None:
        self.inner, self.tier = inner, check_tier(tier)
        self.config = inner.config
        self.version = f"{inner.version}+{tier}"

    def embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        """The inner embedder's outputs (see :class:`~uae_ray.matching.Embedder`)."""
        return self.inner.embed(volume)

    def finish(self, maps: EmbeddingMaps) -> EmbeddingMaps:
        """The maps after a round trip through the tier (model version kept)."""
        out = roundtrip(maps, self.tier)
        out.model_version = self.inner.version
        return out


def write_maps(uri: str, scan_id: str, maps: EmbeddingMaps, tier: str = DEFAULT_TIER) -> int:
    """Writes a scan's maps in a storage tier atomically; returns the bytes written."""
    return write_table_atomic(maps_to_table(scan_id, maps, tier), uri, row_group_column="level")


def read_maps(uri: str) -> EmbeddingMaps:
    """Reads maps written by :func:`write_maps` (embeddings as float32; ``semantic=None`` when
    the file has no semantic level)."""
    return table_to_maps(read_table(uri))
