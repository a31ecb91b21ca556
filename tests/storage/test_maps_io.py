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
    assert write_maps(uri, "abc", maps, tier="full") > 0
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
    assert set(levels) == {"local", "global", "valid", "body"} | ({"semantic"} if semantic else set())
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


def _smooth_maps(body: bool) -> EmbeddingMaps:
    """Maps whose vectors vary smoothly in space (as real ones do; random ones are incompressible),
    with a body mask covering the centre."""
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in (10, 12, 14)), indexing="ij")
    freqs = rng.normal(size=(32, 3))
    phases = rng.uniform(0, 2 * np.pi, 32)
    local = np.sin(freqs[:, 0, None, None, None] * z + freqs[:, 1, None, None, None] * y
                   + freqs[:, 2, None, None, None] * x + phases[:, None, None, None]).astype(np.float32)
    local /= np.linalg.norm(local, axis=0, keepdims=True)
    mask = np.zeros((10, 12, 14), bool)
    mask[2:8, 3:10, 2:12] = True
    return EmbeddingMaps(
        local=local,
        global_=_unit(rng, (8, 3, 3, 4)),
        local_grid=Grid((0.0, 0.0, 0.0), (4.0,) * 3, IDENTITY, (14, 12, 10)),
        global_grid=Grid((0.0, 0.0, 0.0), (16.0,) * 3, IDENTITY, (4, 3, 3)),
        valid=np.ones((10, 12, 14), bool),
        model_version="tiny-test+00000000",
        semantic=local[:16].copy() / np.linalg.norm(local[:16], axis=0, keepdims=True),
        body=mask if body else None,
    )


def _cos(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> np.ndarray:
    return (a[:, where] * b[:, where]).sum(axis=0)


@pytest.mark.parametrize("tier,min_cos", [("full", 0.9999), ("int8", 0.999), ("int8-body", 0.999), ("compact", 0.85),
                                          ("compact-hq", 0.85), ("compact-hq-s1", 0.85), ("compact-hq-hs", 0.85)])
def test_storage_tiers_round_trip(tmp_path: Path, tier: str, min_cos: float) -> None:
    from uae_ray.cohort.maps_io import roundtrip

    maps = _smooth_maps(body=True)
    uri = str(tmp_path / f"{tier}.parquet")
    write_maps(uri, "abc", maps, tier=tier)
    back = read_maps(uri)
    body_only = tier in ("int8-body", "compact", "compact-hq", "compact-hq-s1", "compact-hq-hs")
    expected_valid = maps.valid & maps.body if body_only else maps.valid
    np.testing.assert_array_equal(back.valid, expected_valid)
    np.testing.assert_array_equal(back.body, maps.body)
    for name in ("local", "semantic"):
        a, b = getattr(maps, name), getattr(back, name)
        assert b.shape == a.shape and b.dtype == np.float32
        cos = _cos(a, b, back.valid)
        assert np.median(cos) >= min_cos, (tier, name, np.median(cos))
        if body_only:
            assert not np.any(b[:, ~maps.body]), "voxels outside the body must read back as 0"
    assert np.median(_cos(maps.global_, back.global_, np.ones(back.global_.shape[1:], bool))) >= 0.999
    # the in-memory round trip the benchmarks use gives what a reader of the file gets
    mem = roundtrip(maps, tier)
    np.testing.assert_array_equal(mem.local, back.local)
    np.testing.assert_array_equal(mem.valid, back.valid)


def test_compact_tiers_are_much_smaller_than_full_and_hq_is_closer(tmp_path: Path) -> None:
    maps = _smooth_maps(body=True)
    sizes = {t: write_maps(str(tmp_path / f"{t}.parquet"), "abc", maps, tier=t) for t in ("full", "compact", "compact-hq")}
    assert sizes["compact"] < sizes["compact-hq"] and sizes["compact-hq"] * 2 < sizes["full"], sizes
    cos = {t: np.median(_cos(maps.local, read_maps(str(tmp_path / f"{t}.parquet")).local, maps.body))
           for t in ("compact", "compact-hq")}
    assert cos["compact-hq"] > cos["compact"], cos


def test_half_resolution_semantic_tier_stores_a_quarter_of_the_semantic_voxels(tmp_path: Path) -> None:
    from uae_ray.cohort.maps_io import half_grid

    maps = _smooth_maps(body=True)
    write_maps(str(tmp_path / "compact-hq-hs.parquet"), "abc", maps, tier="compact-hq-hs")
    levels, _ = read_embeddings(str(tmp_path / "compact-hq-hs.parquet"))
    assert levels["semantic"][0].shape == (16, 10, 6, 7) and levels["body_half"][0].shape == (10, 6, 7)
    assert levels["body_half"][0].sum() <= maps.body.sum() / 2  # the semantic vectors stored (bytes: bench speed)
    assert levels["semantic"][1] == {k: list(v) for k, v in asdict(half_grid(maps.local_grid)).items()}
    back = read_maps(str(tmp_path / "compact-hq-hs.parquet"))
    assert back.semantic.shape == maps.semantic.shape  # read back on the local grid
    np.testing.assert_allclose(np.linalg.norm(back.semantic[:, maps.body], axis=0), 1.0, atol=1e-5)


def test_halving_and_doubling_in_plane_keep_a_linear_field_and_the_geometry() -> None:
    from uae_ray.cohort.maps_io import double_inplane, half_grid, halve_inplane

    field = np.broadcast_to(np.arange(8, dtype=np.float32)[None, None, :, None], (1, 2, 8, 6))
    x = np.concatenate([field, np.ones_like(field)])  # (2, Z, Y, X): direction varies with y
    half, mask = halve_inplane(x, np.ones((2, 8, 6), bool))
    assert half.shape == (2, 2, 4, 3) and mask.all()
    back = double_inplane(half * np.sqrt(1 + np.arange(0.5, 8, 2) ** 2)[None, None, :, None], (8, 6))
    np.testing.assert_allclose(back[0, 0, 1:-1, 2], np.arange(1, 7), atol=1e-5)  # interior exact, edges clamped
    grid = Grid((10.0, 20.0, 30.0), (4.0, 3.0, 5.0), IDENTITY, (6, 8, 2))
    half_g = half_grid(grid)
    assert half_g.size == (3, 4, 2) and half_g.spacing == (8.0, 6.0, 5.0)
    np.testing.assert_allclose(half_g.origin, (12.0, 21.5, 30.0))  # centre of the first 2x2 block


def test_masked_tier_without_a_body_mask_keeps_the_valid_voxels(tmp_path: Path) -> None:
    maps = _smooth_maps(body=False)
    maps.valid[:, :, :3] = False
    uri = str(tmp_path / "scan.parquet")
    write_maps(uri, "abc", maps, tier="compact")
    back = read_maps(uri)
    np.testing.assert_array_equal(back.valid, maps.valid)
    assert np.median(_cos(maps.local, back.local, back.valid)) > 0.85


def test_unknown_tier_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown storage tier 'tiny'.*compact"):
        write_maps(str(tmp_path / "x.parquet"), "abc", _smooth_maps(True), tier="tiny")
    assert not (tmp_path / "x.parquet").exists()


def test_format_1_file_still_reads(tmp_path: Path) -> None:
    """A file of the first format (float16 levels, no codec parameters, no masks)."""
    import json

    import pyarrow as pa

    from uae_ray.storage.parquet import write_table_atomic
    from uae_ray.storage.schemas import EMBEDDINGS_META_KEY
    from uae_ray.cohort.maps_io import maps_to_table

    maps = _maps(False)
    table = maps_to_table("old", maps, "full")
    doc = json.loads(table.schema.metadata[EMBEDDINGS_META_KEY])
    keep = {"local", "global", "valid"}
    doc = {**doc, "format": 1, "extra": {}, "levels": {k: v for k, v in doc["levels"].items() if k in keep}}
    table = table.filter(pa.compute.is_in(table.column("level"), pa.array(sorted(keep))))
    table = table.replace_schema_metadata({**table.schema.metadata, EMBEDDINGS_META_KEY: json.dumps(doc).encode()})
    uri = str(tmp_path / "v1.parquet")
    write_table_atomic(table, uri)
    back = read_maps(uri)
    np.testing.assert_array_equal(back.local, maps.local.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(back.valid, maps.valid)
    assert back.body is None


def test_cli_mirrors_the_storage_tiers() -> None:
    from uae_ray.cli import DEFAULT_STORAGE_TIER, STORAGE_TIERS
    from uae_ray.cohort.maps_io import DEFAULT_TIER, TIERS

    assert tuple(STORAGE_TIERS) == tuple(TIERS) and DEFAULT_STORAGE_TIER == DEFAULT_TIER


def test_each_level_is_its_own_row_group_and_the_coarse_read_gets_only_the_global_level(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from uae_ray.cohort.maps_io import read_coarse

    maps = _smooth_maps(body=True)
    uri = str(tmp_path / "scan.parquet")
    write_maps(uri, "abc", maps)
    meta = pq.ParquetFile(uri).metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    # the default tier keeps the semantic level at half resolution, with its own body mask
    levels = {"local", "global", "valid", "body", "semantic", "body_half"}
    assert meta.num_row_groups == len(levels)
    assert all(g.column(1).statistics.min == g.column(1).statistics.max for g in groups)
    assert {g.column(1).statistics.min for g in groups} == levels
    glob, grid, valid, version = read_coarse(uri)
    assert glob.shape == maps.global_.shape and grid == maps.global_grid and version == maps.model_version
    assert valid.shape == maps.global_.shape[1:] and valid.any()
    np.testing.assert_allclose(np.linalg.norm(glob, axis=0), 1.0, atol=1e-5)
