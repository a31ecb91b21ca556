"""The body mask of compact embedding storage (volume.body_mask)."""

from __future__ import annotations

import numpy as np

from uae_ray.volume import body_mask, normalize_ct
from uae_ray.volume.body import BODY_THRESHOLD


def _phantom() -> np.ndarray:
    """(40, 64, 64) normalised CT: air around a soft-tissue cylinder with an air-filled 'lung'
    inside (touching the outside air through a 'trachea' along z, as real lungs do)."""
    hu = np.full((40, 64, 64), -1000.0, np.float32)
    z, y, x = np.meshgrid(np.arange(40), np.arange(64), np.arange(64), indexing="ij")
    hu[(y - 32) ** 2 + (x - 32) ** 2 < 20 ** 2] = 40.0
    hu[(y - 32) ** 2 + (x - 28) ** 2 < 8 ** 2] = -850.0  # lung
    hu[:, 31:33, 27:29] = -1000.0  # trachea: the lung's air reaches the top and bottom faces
    return normalize_ct(hu)


def test_body_mask_fills_the_lungs_and_leaves_the_air_out() -> None:
    mask = body_mask(_phantom(), "CT", (2, 2, 2), (20, 32, 32), margin=0)
    assert mask.shape == (20, 32, 32)
    assert mask[10, 16, 14], "the lung inside the body is body"
    assert not mask[10, 2, 2] and not mask[10, 30, 30], "air around the patient is not"
    assert 0.25 < mask.mean() < 0.45  # pi * 10^2 / 32^2 = 0.31 (any-pooling adds a rim)


def test_body_mask_margin_and_valid_view() -> None:
    vol = _phantom()
    tight = body_mask(vol, "CT", (2, 2, 2), (20, 32, 32), margin=0)
    wide = body_mask(vol, "CT", (2, 2, 2), (20, 32, 32), margin=2)
    assert np.all(wide[tight]) and wide.sum() > tight.sum()
    valid = np.ones((20, 32, 32), bool)
    valid[:, :, 16:] = False
    assert not body_mask(vol, "CT", (2, 2, 2), (20, 32, 32), valid)[:, :, 16:].any()


def test_body_threshold_is_minus_500_hu() -> None:
    assert abs(BODY_THRESHOLD["CT"] - float(normalize_ct(np.array([-500.0]))[0])) < 1e-6
