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
                     bytes per 4 channels): 9.1 MB per clinical CT, +0.15 mm synthetic-warp
                     MRE, +0.17 mm cross-patient (the default of earlier releases)
``compact-hq-s1``    as ``compact-hq`` with one residual stage on the semantic level (0.5
                     bytes per 4 channels): 7.4 MB per clinical CT, +0.20 mm synthetic-warp
                     but +1.13 mm cross-patient MRE (the semantic level's tail)
``compact-hq-hs``    as ``compact-hq`` with the semantic level at half the in-plane
                     resolution (2x2 voxel blocks averaged inside the body; read back
                     bilinearly on the local grid): the default, 7.8 MB per clinical CT at
                     +0.18 mm synthetic-warp and +0.01 mm cross-patient MRE
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
    "compact-hq-hs": {"local": ("rpq3", True), "semantic": ("rpq3", True), "global": ("int8", False)},
}
#: tiers that store the semantic level at half the in-plane (y, x) resolution
HALF_SEMANTIC_TIERS = frozenset({"compact-hq-hs"})
DEFAULT_TIER = "compact-hq-hs"
_BODY = "body"
_BODY_HALF = "body_half"  # the body mask of a half-resolution semantic level


def embeddings_uri(out: str, scan_id: str) -> str:
    """Where a scan's embeddings live under a cohort output prefix."""
    return join(out, "embeddings", f"{scan_id}.parquet")


def _grid_dict(grid: Grid) -> dict[str, Any]:
    return {k: list(v) for k, v in asdict(grid).items()}


def _grid(d: dict[str, Any]) -> Grid:
    return Grid(tuple(d["origin"]), tuple(d["spacing"]), tuple(d["direction"]), tuple(int(s) for s in d["size"]))


def _pad_even_yx(x: np.ndarray) -> np.ndarray:
    """(..., Y, X) -> (..., 2*ceil(Y/2), 2*ceil(X/2)), the last row / column repeated."""
    pad = [(0, 0)] * (x.ndim - 2) + [(0, x.shape[-2] % 2), (0, x.shape[-1] % 2)]
    return np.pad(x, pad, mode="edge")


def _blocks_yx(x: np.ndarray) -> np.ndarray:
    """(..., Y, X) -> (..., Y/2, X/2, 4): the 2x2 in-plane blocks of an even-sized array."""
    *lead, ny, nx = x.shape
    return x.reshape(*lead, ny // 2, 2, nx // 2, 2).swapaxes(-3, -2).reshape(*lead, ny // 2, nx // 2, 4)


def halve_inplane(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, Z, Y, X) vectors -> (C, Z, ceil(Y/2), ceil(X/2)) unit-length means over the voxels of
    ``mask`` (Z, Y, X) in each 2x2 in-plane block, and the halved mask (any voxel of the block)."""
    blocks = _blocks_yx(_pad_even_yx(mask))
    total = (_blocks_yx(_pad_even_yx(np.asarray(x, dtype=np.float32))) * blocks).sum(axis=-1)
    return _unit(total), blocks.any(axis=-1)


def _double_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """Linear upsampling by 2 along ``axis`` (-2 or -1): output voxel 2k sits at k - 1/4 and
    2k + 1 at k + 1/4 of the input, edges clamped (written in place into one new array)."""
    xv = np.moveaxis(x, axis, -1)
    shape = list(xv.shape)
    shape[-1] *= 2
    out = np.empty(shape, dtype=x.dtype)
    even, odd = out[..., 0::2], out[..., 1::2]
    np.multiply(xv, 0.75, out=even)
    even[..., 1:] += 0.25 * xv[..., :-1]
    even[..., 0] += 0.25 * xv[..., 0]
    np.multiply(xv, 0.75, out=odd)
    odd[..., :-1] += 0.25 * xv[..., 1:]
    odd[..., -1] += 0.25 * xv[..., -1]
    return np.moveaxis(out, -1, axis)


def double_inplane(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, Z, y, x) -> (C, Z, *shape): bilinear upsampling by 2 in-plane (the inverse geometry
    of :func:`halve_inplane`), cropped to ``shape`` (Y, X)."""
    return _double_axis(_double_axis(x, -2), -1)[..., : shape[0], : shape[1]]


def half_grid(grid: Grid) -> Grid:
    """The grid of :func:`halve_inplane`'s output: x, y spacing doubled, origin at the centre
    of the first 2x2 block."""
    d = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(grid.origin) + d @ np.array([0.5 * grid.spacing[0], 0.5 * grid.spacing[1], 0.0])
    sx, sy, sz = grid.spacing
    nx, ny, nz = grid.size
    return Grid(tuple(origin), (2 * sx, 2 * sy, sz), grid.direction, ((nx + 1) // 2, (ny + 1) // 2, nz))


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
    masks = {level: _BODY for level in ("local", "global", "semantic") if spec[level][1]}
    if maps.semantic is not None and tier in HALF_SEMANTIC_TIERS:
        semantic, body_half = halve_inplane(maps.semantic, body)
        half = _grid_dict(half_grid(maps.local_grid))
        levels["semantic"], levels[_BODY_HALF] = (semantic, half), (body_half, half)
        masks["semantic"] = _BODY_HALF
    elif maps.semantic is not None:
        levels["semantic"] = (maps.semantic, local_grid)
    masks = {level: mask for level, mask in masks.items() if level in levels}
    codecs = {level: _codec(spec[level][0], levels[level][0]) for level in levels if level in spec}
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
    semantic = level("semantic")
    if semantic is not None and semantic.shape[1:] != valid.shape:  # stored at half resolution
        semantic = _unit(double_inplane(semantic, valid.shape[1:]))
        if body is not None:
            semantic *= body
    return EmbeddingMaps(
        local=level("local"),
        global_=level("global"),
        local_grid=_grid(levels["local"][1]),
        global_grid=_grid(levels["global"][1]),
        valid=valid,
        model_version=meta["model_version"],
        semantic=semantic,
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
