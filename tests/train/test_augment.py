"""Random views: the analytic correspondence between two views is exact."""

from __future__ import annotations

import numpy as np
import torch

from uae_ray.train.augment import RandomAffineView, RandomIntensity, extract_view, gaussian_blur, sample_at


def _linear_volume(shape: tuple[int, int, int]) -> tuple[torch.Tensor, np.ndarray]:
    coef = np.array([0.013, -0.021, 0.034])  # per x, y, z voxel
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    vol = coef[0] * x + coef[1] * y + coef[2] * z + 0.1
    return torch.from_numpy(vol[None].astype(np.float64)), coef


def test_view_round_trip() -> None:
    a, b = RandomAffineView((16, 20, 24), seed=3)(np.array([30.0, 31.0, 32.0]))
    u = np.random.default_rng(0).uniform(0, 15, (50, 3))
    np.testing.assert_allclose(a.from_volume(a.to_volume(u)), u, atol=1e-9)
    np.testing.assert_allclose(b.to_volume(b.from_volume(a.to_volume(u))), a.to_volume(u), atol=1e-9)
    # torch and numpy versions agree
    np.testing.assert_allclose(a.to_volume_torch(torch.from_numpy(u)).numpy(), a.to_volume(u), atol=1e-9)


def test_correspondence_exact_on_linear_volume() -> None:
    # Trilinear interpolation reproduces a linear function exactly, so a view voxel of A and
    # its analytic counterpart in B must hold the same value (to float64 rounding).
    vol, _ = _linear_volume((64, 64, 64))
    views = RandomAffineView((24, 24, 24), max_rotation_deg=15, max_offset_vox=4, seed=7)
    for _ in range(3):
        va, vb = views(np.array([31.5, 32.0, 30.5]))
        img_a, img_b = extract_view(vol, va, 0.0), extract_view(vol, vb, 0.0)
        u_a = np.random.default_rng(1).uniform(2, 21, (200, 3))
        u_b = vb.from_volume(va.to_volume(u_a))
        inside = np.all((u_b >= 0) & (u_b <= 23), axis=1)
        assert inside.sum() > 20
        val_a = sample_at(img_a, torch.from_numpy(u_a[inside]))[0]
        val_b = sample_at(img_b, torch.from_numpy(u_b[inside]))[0]
        torch.testing.assert_close(val_a, val_b, atol=1e-5, rtol=0)  # float32 view grids


def test_correspondence_finds_same_anatomy() -> None:
    # A single bright blob: its brightest voxel in view B is where view A's blob maps to.
    shape = (64, 64, 64)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.array([28.0, 35.0, 30.0])  # x, y, z
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * 2.0**2))
    vol = torch.from_numpy(blob[None].astype(np.float64))
    views = RandomAffineView((32, 32, 32), max_offset_vox=6, seed=11)
    for _ in range(3):
        for view in views(centre):
            img = extract_view(vol, view, 0.0)[0]
            peak = np.array(np.unravel_index(int(img.argmax()), img.shape))[::-1]
            expected = view.from_volume(centre[None])[0]
            assert np.all((expected > 2) & (expected < 29))
            assert np.linalg.norm(peak - expected) <= 0.9  # nearest voxel to the exact position


def test_intensity_is_seeded_and_keeps_shape() -> None:
    x = torch.linspace(-1, 1, 8 * 8 * 8).reshape(1, 8, 8, 8)
    a = RandomIntensity(seed=5)(x)
    b = RandomIntensity(seed=5)(x)
    c = RandomIntensity(seed=6)(x)
    assert a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gaussian_blur_preserves_constant() -> None:
    x = torch.full((6, 7, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(x, 1.0), x)
