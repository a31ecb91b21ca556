"""Embedding maps <-> Parquet objects (the EMBEDDINGS schema of :mod:`uae_ray.storage`).

Levels: ``local``, ``global``, ``valid`` and, for models with a UAE semantic head,
``semantic`` (on the local grid). Files written before the semantic level existed (or by a
model without one) read back with ``semantic=None``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from uae_ray.matching import EmbeddingMaps
from uae_ray.storage import join
from uae_ray.storage.parquet import read_embeddings, write_embeddings
from uae_ray.volume import Grid


def embeddings_uri(out: str, scan_id: str) -> str:
    """Where a scan's embeddings live under a cohort output prefix."""
    return join(out, "embeddings", f"{scan_id}.parquet")


def _grid_dict(grid: Grid) -> dict[str, Any]:
    return {k: list(v) for k, v in asdict(grid).items()}


def _grid(d: dict[str, Any]) -> Grid:
    return Grid(tuple(d["origin"]), tuple(d["spacing"]), tuple(d["direction"]), tuple(int(s) for s in d["size"]))


def write_maps(uri: str, scan_id: str, maps: EmbeddingMaps) -> int:
    """Writes a scan's maps (float16) atomically; returns the bytes written."""
    levels = {
        "local": (maps.local, _grid_dict(maps.local_grid)),
        "global": (maps.global_, _grid_dict(maps.global_grid)),
        "valid": (maps.valid, _grid_dict(maps.local_grid)),
    }
    if maps.semantic is not None:
        levels["semantic"] = (maps.semantic, _grid_dict(maps.local_grid))
    return write_embeddings(uri, levels, {"scan_id": scan_id, "model_version": maps.model_version})


def read_maps(uri: str) -> EmbeddingMaps:
    """Reads maps written by :func:`write_maps` (embeddings as float32; ``semantic=None`` when
    the file has no semantic level)."""
    levels, meta = read_embeddings(uri)
    local, local_grid = levels["local"]
    global_, global_grid = levels["global"]
    semantic = levels.get("semantic")
    return EmbeddingMaps(
        local=local.astype(np.float32),
        global_=global_.astype(np.float32),
        local_grid=_grid(local_grid),
        global_grid=_grid(global_grid),
        valid=np.asarray(levels["valid"][0], dtype=bool),
        model_version=meta["model_version"],
        semantic=None if semantic is None else semantic[0].astype(np.float32),
    )
