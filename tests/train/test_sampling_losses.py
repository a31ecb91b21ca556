"""Correspondence sampling, negative mining and the InfoNCE loss."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from uae_ray.train.augment import RandomAffineView
from uae_ray.train.losses import info_nce
from uae_ray.train.sampling import find_correspondences, map_volume_positions, mine_negatives


def test_find_correspondences_consistent() -> None:
    va, vb = RandomAffineView((32, 32, 32), seed=2)(np.array([40.0, 40.0, 40.0]))
    shape = (16, 16, 16)
    corr = find_correspondences(va, vb, shape, 2, torch.ones(shape, dtype=torch.bool), torch.ones(32, 32, 32), 64, np.random.default_rng(0))
    assert 0 < len(corr) <= 64
    vol_a = va.to_volume(2.0 * corr.anchor_idx.numpy())
    np.testing.assert_allclose(vol_a, corr.volume_pos.numpy(), atol=1e-9)
    np.testing.assert_allclose(vb.to_volume(2.0 * corr.target_pos.numpy()), vol_a, atol=1e-9)
    assert torch.all(corr.target_pos >= 0) and torch.all(corr.target_pos <= 15)
    pos = map_volume_positions(vb, shape, 2)
    assert pos.shape == (16**3, 3)


def test_anchor_mask_respected() -> None:
    va, vb = RandomAffineView((32, 32, 32), max_offset_vox=0, seed=4)(np.array([40.0, 40.0, 40.0]))
    ok = torch.zeros(16, 16, 16, dtype=torch.bool)
    ok[8, 8, 8] = True
    corr = find_correspondences(va, vb, (16, 16, 16), 2, ok, torch.ones(32, 32, 32), 10, np.random.default_rng(0))
    assert corr.anchor_idx.tolist() == [[8, 8, 8]]


def test_mine_negatives_only_allowed() -> None:
    g = torch.Generator().manual_seed(0)
    rank = torch.rand(5, 50, generator=g)
    allowed = torch.rand(5, 50, generator=g) > 0.3
    idx = mine_negatives(rank, allowed, 4, 6, g)
    assert idx.shape == (5, 10)
    assert bool(allowed.gather(1, idx).all())
    hard = idx[:, :4]
    best_allowed = rank.masked_fill(~allowed, -1).max(dim=1).values
    torch.testing.assert_close(rank.gather(1, hard[:, :1])[:, 0], best_allowed)


def test_info_nce_value() -> None:
    a = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    cand = F.normalize(torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]), dim=1)
    idx = torch.tensor([[0, 1, 2]])
    ok = torch.tensor([[True, True, False]])
    loss = info_nce(a, a.clone(), cand, idx, ok, temperature=0.5)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0) + math.exp(-2.0)))
    assert abs(loss.item() - expected) < 1e-6
    assert info_nce(a[:0], a[:0], cand, idx[:0], ok[:0], 0.5).item() == 0.0
