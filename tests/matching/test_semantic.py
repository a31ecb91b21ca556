"""Semantic maps in EmbeddingMaps and in matching: global + local + semantic averaged when both
sides have them, unchanged when either has none."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from uae_ray.matching import FixedPointConfig, Matcher, find_points, maps_from_outputs, match_points, sample_embeddings
from uae_ray.matching.embed import EmbeddingMaps
from uae_ray.volume import Grid, PreparedVolume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _smooth_field(shape: tuple[int, ...], channels: int, seed: int, sigma: float) -> np.ndarray:
    from uae_ray.train.augment import gaussian_blur

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(channels, *shape)).astype(np.float32))
    return torch.nn.functional.normalize(gaussian_blur(x, sigma), dim=0).numpy()


def _maps() -> EmbeddingMaps:
    return EmbeddingMaps(
        local=_smooth_field((20, 22, 24), 16, 0, 0.8),
        global_=_smooth_field((5, 6, 6), 8, 1, 1.5),
        local_grid=Grid((0.0, 0.0, 0.0), (4.0,) * 3, IDENTITY, (24, 22, 20)),
        global_grid=Grid((0.0, 0.0, 0.0), (16.0,) * 3, IDENTITY, (6, 6, 5)),
        valid=np.ones((20, 22, 24), dtype=bool),
        model_version="test",
    )


def _voxel_points(maps: EmbeddingMaps, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(2, s - 2, n) for s in maps.local_grid.size], axis=1).astype(float)
    return maps.local_grid.index_to_world(idx)


def _with_semantic(maps: EmbeddingMaps, seed: int = 7) -> EmbeddingMaps:
    return replace(maps, semantic=_smooth_field(maps.local.shape[1:], 8, seed, 1.5))


def _twin_halves() -> tuple[EmbeddingMaps, EmbeddingMaps]:
    """Maps whose local map repeats along x (two identical halves) and whose global map is
    constant: without semantics the right half is indistinguishable from the left; the semantic
    map (one 'organ' per half) tells them apart."""
    half = _smooth_field((16, 18, 12), 16, 0, 0.8)
    local = np.concatenate([half, half], axis=3)
    glob = np.zeros((8, 4, 5, 6), np.float32)
    glob[0] = 1.0
    sem = np.zeros((4, 16, 18, 24), np.float32)
    sem[0, ..., :12] = 1.0
    sem[1, ..., 12:] = 1.0
    plain = EmbeddingMaps(
        local=local, global_=glob,
        local_grid=Grid((0.0, 0.0, 0.0), (4.0,) * 3, IDENTITY, (24, 18, 16)),
        global_grid=Grid((0.0, 0.0, 0.0), (16.0,) * 3, IDENTITY, (6, 5, 4)),
        valid=np.ones((16, 18, 24), dtype=bool), model_version="test",
    )
    return plain, replace(plain, semantic=sem)


def test_maps_validate_and_carry_semantic() -> None:
    maps = _with_semantic(_maps())
    assert maps.has_semantic and not _maps().has_semantic
    with pytest.raises(ValueError, match="semantic map shape"):
        replace(_maps(), semantic=np.zeros((8, 3, 3, 3), np.float32))


def test_maps_from_outputs_keeps_semantic() -> None:
    from uae_ray.models import EmbeddingConfig

    grid = Grid((1.0, 2.0, 3.0), (2.0,) * 3, IDENTITY, (32, 32, 16))
    prepared = PreparedVolume(np.zeros((16, 32, 32), np.float32), grid, "CT", np.ones((16, 32, 32), bool))
    out = {"local": np.ones((4, 8, 16, 16), np.float32), "global": np.ones((4, 2, 4, 4), np.float32)}
    cfg = EmbeddingConfig()
    assert maps_from_outputs(out, prepared, cfg, "v").semantic is None
    sem = np.ones((3, 8, 16, 16), np.float32)
    maps = maps_from_outputs({**out, "semantic": sem}, prepared, cfg, "v")
    assert maps.semantic is sem and maps.local_grid.size == (16, 16, 8)


def test_sample_embeddings_with_semantic() -> None:
    maps = _with_semantic(_maps())
    pts = _voxel_points(maps, 6)
    loc, glo = sample_embeddings(maps, pts)
    loc2, glo2, sem = sample_embeddings(maps, pts, with_semantic=True)
    np.testing.assert_array_equal(loc, loc2)
    idx = np.round(maps.local_grid.world_to_index(pts)).astype(int)
    np.testing.assert_allclose(sem, maps.semantic[:, idx[:, 2], idx[:, 1], idx[:, 0]].T, atol=1e-5)
    assert sample_embeddings(_maps(), pts, with_semantic=True)[2] is None


def test_similarity_is_the_mean_of_three_cosine_maps() -> None:
    maps = _with_semantic(_maps())
    pts = _voxel_points(maps, 3, seed=5)
    ql, qg, qs = (torch.from_numpy(a) for a in sample_embeddings(maps, pts, with_semantic=True))
    m = Matcher().set_target(maps)
    combined, local = m.similarity(ql, qg, qs)
    two, _ = m.similarity(ql, qg)
    sem = torch.einsum("nc,czyx->nzyx", qs, torch.from_numpy(maps.semantic))
    torch.testing.assert_close(combined, (2.0 * two + sem) / 3.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(local, torch.einsum("nc,czyx->nzyx", ql, torch.from_numpy(maps.local)), atol=1e-5, rtol=0)


def test_identical_and_shifted_maps_with_semantic_exact() -> None:
    a = _with_semantic(_maps())
    pts = _voxel_points(a, 20, seed=1)
    out, scores = match_points(a, pts, a)
    np.testing.assert_allclose(out, pts, atol=1e-6)
    assert np.all(scores > 0.9) and np.all(scores <= 1.0 + 1e-5)
    shift = np.array([7.3, -4.1, 2.0])
    b = replace(a, local_grid=replace(a.local_grid, origin=tuple(shift)), global_grid=replace(a.global_grid, origin=tuple(shift)))
    out, _ = match_points(a, pts, b)
    np.testing.assert_allclose(out, pts + shift, atol=1e-6)


def test_semantic_disambiguates_repeated_local_structure() -> None:
    plain, sem = _twin_halves()
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(15, 21, 12), rng.integers(3, 15, 12), rng.integers(3, 13, 12)], axis=1).astype(float)
    pts = plain.local_grid.index_to_world(idx)  # right half (x index 15..20)
    left = pts - np.array([48.0, 0.0, 0.0])  # the same local pattern 12 voxels to the left
    out_plain, _ = match_points(plain, pts, plain)
    np.testing.assert_allclose(out_plain, left, atol=1e-6)  # ties: the first (left) copy wins
    out_sem, _ = match_points(sem, pts, sem)
    np.testing.assert_allclose(out_sem, pts, atol=1e-6)
    # only one side with semantics: plain global + local matching, no error
    out_mixed, _ = match_points(plain, pts, sem)
    np.testing.assert_allclose(out_mixed, left, atol=1e-6)
    assert Matcher().set_target(sem).uses_semantic and not Matcher().set_target(plain).uses_semantic


def test_fixed_point_uses_semantic() -> None:
    plain, sem = _twin_halves()
    idx = np.array([[17.0, 9.0, 8.0], [18.0, 6.0, 7.0]])
    pts = plain.local_grid.index_to_world(idx)
    cfg = FixedPointConfig(radius_mm=4.0, chunk=64)
    r = find_points(sem, pts, sem, "fixed-point", cfg)
    np.testing.assert_allclose(r.points, pts, atol=1e-4)
    assert r.found.all()
    r_plain = find_points(plain, pts, plain, "fixed-point", cfg)
    assert np.all(np.linalg.norm(r_plain.points - pts, axis=1) > 40.0)


def test_matcher_rejects_semantic_channel_mismatch() -> None:
    a = _with_semantic(_maps())
    b = replace(a, semantic=a.semantic[:4] / np.linalg.norm(a.semantic[:4], axis=0))
    with pytest.raises(ValueError, match="semantic embeddings have 8 channels"):
        match_points(a, _voxel_points(a, 2), b)


@pytest.mark.parametrize("semantic", [False, True])
def test_whole_target_search_is_the_best_valid_voxel_of_the_similarity_maps(semantic) -> None:
    # The search works on the valid voxels' columns only; it must equal the arg max of the
    # full similarity maps with the invalid voxels masked out.
    maps = _with_semantic(_maps()) if semantic else _maps()
    valid = np.ones_like(maps.valid)
    valid[:, :, 16:] = False  # a third of the target outside its view
    valid[:3] = False
    target = replace(maps, valid=valid)
    pts = _voxel_points(maps, 40, seed=3)
    emb = sample_embeddings(maps, pts, with_semantic=True)
    ql, qg, qs = (torch.from_numpy(a) if a is not None else None for a in emb)
    m = Matcher(subvoxel=0).set_target(target)
    combined, _ = m.similarity(ql, qg, qs if semantic else None)
    flat = combined.reshape(len(pts), -1).masked_fill(~torch.from_numpy(valid).reshape(1, -1), float("-inf"))
    best, arg = flat.max(dim=1)
    expect = target.local_grid.index_to_world(np.stack(np.unravel_index(arg.numpy(), valid.shape), axis=1)[:, ::-1].astype(float))
    got, scores = m.predict_features(*(a.numpy() for a in (ql, qg)), qs.numpy() if semantic else None)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(scores, best.numpy())
    assert valid[tuple(np.rint(target.local_grid.world_to_index(got)).astype(int)[:, ::-1].T)].all()
