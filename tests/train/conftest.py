"""Shared fixtures for the training tests: a small synthetic 'anatomy' volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uae_ray.train.augment import gaussian_blur
from uae_ray.train.data import TrainVolume


def phantom(shape: tuple[int, int, int] = (48, 48, 48), seed: int = 0) -> np.ndarray:
    """Smooth random 'tissue' inside an ellipsoid body, air (-1) outside; (Z, Y, X) float32."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
    tissue = gaussian_blur(noise, 2.0).numpy()
    tissue = -0.5 + 0.3 * tissue / (np.abs(tissue).max() + 1e-6)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (zz**2 + yy**2 + xx**2) < 0.8
    return np.where(body, tissue, -1.0).astype(np.float32)


def train_volume(arr: np.ndarray, case_id: str = "phantom") -> TrainVolume:
    data = torch.from_numpy(np.stack([arr + 1.0, np.ones_like(arr)]))
    zyx = np.argwhere(arr > -0.9)
    return TrainVolume(case_id, data, zyx[:, ::-1].astype(np.float64).copy())


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny workloads: one intra-op thread (two threads on a shared, busy CPU spin badly)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def phantom_volumes() -> list[TrainVolume]:
    """Two small phantom training volumes (case ids p0, p1)."""
    return [train_volume(phantom(seed=s), f"p{s}") for s in (0, 1)]
