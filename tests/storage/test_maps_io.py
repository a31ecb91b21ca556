"""Embedding maps with and without the semantic level through Parquet (cohort.maps_io)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from uae_ray.cohort.maps_io import read_maps, write_maps
from uae_ray.matching import EmbeddingMaps
from uae_ray.storage.parquet import read_embeddings, write_embeddings
from uae_ray.volume import Grid

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=0, keepdims=True)


def _maps(semantic: bool) -> EmbeddingMaps:
    rng = np.random.default_rng(0)
    valid = rng.random((6, 7, 8)) > 0.2
    return EmbeddingMaps(
        local=_unit(rng, (4, 6, 7, 8)),
        global_=_unit(rng, (3, 2, 2, 2)),
        local_grid=Grid((1.5, -2.0, 30.0), (4.0,) * 3, IDENTITY, (8, 7, 6)),
        global_grid=Grid((1.5, -2.0, 30.0), (16.0,) * 3, IDENTITY, (2, 2, 2)),
        valid=valid,
        model_version="tiny-test+00000000",
        semantic=_unit(rng, (5, 6, 7, 8)) if semantic else None,
    )


@pytest.mark.parametrize("semantic", [False, True])
def test_maps_round_trip(tmp_path: Path, semantic: bool) -> None:
    maps = _maps(semantic)
    uri = str(tmp_path / "scan.parquet")
    assert write_maps(uri, "abc", maps) > 0
    back = read_maps(uri)
    for name in ("local", "global_", "semantic") if semantic else ("local", "global_"):
        a, b = getattr(maps, name), getattr(back, name)
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_array_equal(b, a.astype(np.float16).astype(np.float32))  # exact at float16
    np.testing.assert_array_equal(back.valid, maps.valid)
    assert back.local_grid == maps.local_grid and back.global_grid == maps.global_grid
    assert back.model_version == maps.model_version
    assert (back.semantic is not None) == semantic
    levels, _ = read_embeddings(uri)
    assert set(levels) == {"local", "global", "valid"} | ({"semantic"} if semantic else set())
    assert levels.get("semantic", (None, {}))[1] == ({k: list(v) for k, v in asdict(maps.local_grid).items()} if semantic else {})


def test_file_written_without_the_semantic_level_still_reads(tmp_path: Path) -> None:
    """A file of the earlier layout (local, global, valid only, written directly)."""
    maps = _maps(False)

    def grid(g: Grid) -> dict:
        return {k: list(v) for k, v in asdict(g).items()}

    uri = str(tmp_path / "old.parquet")
    write_embeddings(uri, {"local": (maps.local, grid(maps.local_grid)), "global": (maps.global_, grid(maps.global_grid)),
                           "valid": (maps.valid, grid(maps.local_grid))},
                     {"scan_id": "old", "model_version": "tiny-v0+12345678"})
    back = read_maps(uri)
    assert back.semantic is None and not back.has_semantic
    assert back.local.shape == maps.local.shape and back.model_version == "tiny-v0+12345678"
