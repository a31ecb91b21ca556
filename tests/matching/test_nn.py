"""match_points / Matcher on synthetic embedding maps and on a real (untrained) network."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from uae_ray.matching.embed import EmbeddingMaps, embed_image
from uae_ray.matching.nn import Matcher, MatcherCache, match_points, sample_embeddings
from uae_ray.models import build_model, embed_array
from uae_ray.volume import Grid

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _smooth_field(shape: tuple[int, ...], channels: int, seed: int, sigma: float) -> np.ndarray:
    from uae_ray.train.augment import gaussian_blur

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(channels, *shape)).astype(np.float32))
    x = gaussian_blur(x, sigma)
    return torch.nn.functional.normalize(x, dim=0).numpy()


def _maps(origin=(0.0, 0.0, 0.0), seed: int = 0) -> EmbeddingMaps:
    local = _smooth_field((20, 22, 24), 16, seed, 0.8)
    glob = _smooth_field((5, 6, 6), 8, seed + 1, 1.5)
    return EmbeddingMaps(
        local=local,
        global_=glob,
        local_grid=Grid(origin, (4.0,) * 3, IDENTITY, (24, 22, 20)),
        global_grid=Grid(origin, (16.0,) * 3, IDENTITY, (6, 6, 5)),
        valid=np.ones((20, 22, 24), dtype=bool),
        model_version="test",
    )


def _voxel_points(maps: EmbeddingMaps, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(2, s - 2, n) for s in maps.local_grid.size], axis=1).astype(float)
    return maps.local_grid.index_to_world(idx)


def test_identical_maps_exact() -> None:
    maps = _maps()
    pts = _voxel_points(maps, 30)
    out, scores = match_points(maps, pts, maps, chunk=7)
    np.testing.assert_allclose(out, pts, atol=1e-6)
    assert np.all(scores > 0.9) and np.all(scores <= 1.0 + 1e-5)


def test_shifted_copy_exact() -> None:
    shift = np.array([7.3, -4.1, 2.0])
    a, b = _maps(), _maps(origin=tuple(shift))
    pts = _voxel_points(a, 25, seed=1)
    out, _ = match_points(a, pts, b)
    np.testing.assert_allclose(out, pts + shift, atol=1e-6)


def test_subvoxel_refinement_moves_towards_truth() -> None:
    maps = _maps()
    rng = np.random.default_rng(3)
    idx = np.stack([rng.uniform(3, s - 3, 40) for s in maps.local_grid.size], axis=1)
    pts = maps.local_grid.index_to_world(idx)
    out, _ = match_points(maps, pts, maps)
    err = np.linalg.norm(out - pts, axis=1)
    assert np.mean(err) < 1.5  # voxel is 4 mm; integer argmax alone averages ~2 mm


def test_without_subvoxel_refinement_matches_are_voxel_centres() -> None:
    maps = _maps()
    rng = np.random.default_rng(3)
    idx = np.stack([rng.uniform(3, s - 3, 20) for s in maps.local_grid.size], axis=1)
    pts = maps.local_grid.index_to_world(idx)
    coarse, _ = Matcher(subvoxel=0).set_target(maps).predict(maps, pts)
    coarse_idx = maps.local_grid.world_to_index(coarse)
    np.testing.assert_allclose(coarse_idx, np.rint(coarse_idx), atol=1e-9)
    assert np.all(np.abs(coarse_idx - idx) <= 1.0 + 1e-9)  # the nearest voxel or a neighbour
    windowed, _ = Matcher(subvoxel=0).set_target(maps).predict(maps, pts, pts, 8.0)
    np.testing.assert_allclose(windowed, coarse, atol=1e-9)


def test_valid_mask_restricts_argmax() -> None:
    maps = _maps()
    pts = _voxel_points(maps, 5, seed=2)
    idx = np.round(maps.local_grid.world_to_index(pts)).astype(int)
    maps.valid[idx[0, 2], idx[0, 1], idx[0, 0]] = False
    out, _ = match_points(maps, pts, maps)
    assert np.linalg.norm(out[0] - pts[0]) > 1.0
    np.testing.assert_allclose(out[1:], pts[1:], atol=1e-6)


def test_sample_embeddings_unit_and_exact_at_voxels() -> None:
    maps = _maps()
    pts = _voxel_points(maps, 4)
    loc, glo = sample_embeddings(maps, pts)
    assert loc.shape == (4, 16) and glo.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(loc, axis=1), 1.0, atol=1e-5)
    idx = np.round(maps.local_grid.world_to_index(pts)).astype(int)
    np.testing.assert_allclose(loc, maps.local[:, idx[:, 2], idx[:, 1], idx[:, 0]].T, atol=1e-5)


def test_matcher_requires_target() -> None:
    with pytest.raises(RuntimeError, match="set_target"):
        Matcher().predict(_maps(), np.zeros((1, 3)))


class _NetEmbedder:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = build_model().eval()
        self.version = self.model.version
        self.config = self.model.config

    def embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        return embed_array(self.model, volume)


def test_matcher_cache_keeps_one_matcher_per_maps() -> None:
    a, b, c = _maps(seed=0), _maps(seed=1), _maps(seed=2)
    cache = MatcherCache(size=2)
    first = cache(a)
    assert cache(a) is first and first.target is a
    cache(b), cache(c)  # a is the oldest: dropped
    assert cache(a) is not first and cache(a).target is a
    pts = _voxel_points(a, 5)
    assert np.allclose(cache(b).predict(a, pts)[0], Matcher().set_target(b).predict(a, pts)[0])


def _phantom_image(origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    rng = np.random.default_rng(0)
    shape = (48, 64, 64)
    arr = rng.normal(0.0, 1.0, shape)
    img = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(arr), 2.0)
    a = sitk.GetArrayFromImage(img)
    a = 400.0 * a / np.abs(a).max()
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    a = np.where(zz**2 + yy**2 + xx**2 < 0.9, a, -1000.0).astype(np.int16)
    out = sitk.GetImageFromArray(a)
    out.SetSpacing((2.0, 2.0, 2.0))
    out.SetOrigin(origin)
    return out


def test_network_identical_and_shifted_volume() -> None:
    embedder = _NetEmbedder()
    a = embed_image(_phantom_image(), embedder, "CT")
    # identical volume: exact points
    grid = a.local_grid
    idx = np.array([[10, 12, 8], [20, 14, 12], [14, 18, 10]], dtype=float)
    pts = grid.index_to_world(idx)
    out, scores = match_points(a, pts, a)
    np.testing.assert_allclose(out, pts, atol=1e-6)
    assert np.all(scores > 0.999)
    # the same anatomy shifted by 32 mm (a multiple of every stride): same points + shift
    shift = np.array([32.0, -32.0, 0.0])
    b = embed_image(_phantom_image(origin=tuple(shift)), embedder, "CT")
    out, _ = match_points(a, pts, b)
    np.testing.assert_allclose(out, pts + shift, atol=1e-3)


def test_anisotropic_global_stride_exact() -> None:
    """sam-r18's global map has per-axis strides (z 4, y 16, x 16 over the 2 mm input)."""
    local = _smooth_field((20, 24, 24), 16, 5, 0.8)
    glob = _smooth_field((10, 3, 3), 8, 6, 2.0)
    maps = EmbeddingMaps(
        local=local,
        global_=glob,
        local_grid=Grid((0.0, 0.0, 0.0), (4.0,) * 3, IDENTITY, (24, 24, 20)),
        global_grid=Grid((0.0, 0.0, 0.0), (32.0, 32.0, 8.0), IDENTITY, (3, 3, 10)),
        valid=np.ones((20, 24, 24), dtype=bool),
        model_version="test",
    )
    m = Matcher().set_target(maps)
    assert m._factor == (2, 8, 8)
    pts = _voxel_points(maps, 20, seed=4)
    out, _ = match_points(maps, pts, maps)
    np.testing.assert_allclose(out, pts, atol=1e-6)


def test_matching_windowed_search_equals_the_full_search_when_the_peak_is_inside():
    rng = np.random.default_rng(3)
    local = rng.normal(size=(8, 12, 14, 16)).astype(np.float32)
    local /= np.linalg.norm(local, axis=0, keepdims=True)
    glob = rng.normal(size=(8, 6, 7, 8)).astype(np.float32)
    glob /= np.linalg.norm(glob, axis=0, keepdims=True)
    lg = Grid((0.0, 0.0, 0.0), (4.0, 4.0, 4.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 14, 12))
    gg = Grid((0.0, 0.0, 0.0), (8.0, 8.0, 8.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (8, 7, 6))
    maps = EmbeddingMaps(local=local, global_=glob, local_grid=lg, global_grid=gg,
                         valid=np.ones((12, 14, 16), dtype=bool), model_version="t")
    pts = lg.index_to_world(rng.uniform(1, 10, (20, 3)))
    matcher = Matcher().set_target(maps)
    full, s_full = matcher.predict(maps, pts)
    win, s_win = matcher.predict(maps, pts, centres=full + rng.uniform(-6, 6, full.shape), radius_mm=12.0)
    np.testing.assert_allclose(win, full, atol=1e-6)
    np.testing.assert_allclose(s_win, s_full, atol=1e-5)
    # a window far from the peak finds something else, never the peak outside it
    corner = lg.index_to_world(np.array([[2.0, 2.0, 2.0]]))
    away, _ = matcher.predict(maps, pts, centres=np.repeat(corner, len(pts), axis=0), radius_mm=8.0)
    assert np.abs(away - corner).max() <= 8.0 + 1.875 * 4.0 + 1e-6  # window + sub-voxel refinement (<= 1.875 voxel)
    assert np.abs(full - corner).max() > 12.0  # while some full-search peaks lie outside it
