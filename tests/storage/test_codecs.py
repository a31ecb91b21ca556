"""The lossy vector codecs of the compact storage tiers (storage.codecs)."""

from __future__ import annotations

import numpy as np
import pytest

from uae_ray.storage import codecs


def test_int8_error_is_within_half_a_step_per_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32) * np.array([1, 10, 0.1, 1, 1, 0], np.float32)
    codes, scales = codecs.int8_encode(x)
    assert codes.dtype == np.int8 and scales.shape == (6,)
    err = np.abs(codecs.int8_decode(codes, scales) - x)
    assert np.all(err <= scales / 2 + 1e-6)
    assert np.all(codecs.int8_decode(codes, scales)[:, 5] == 0)  # a constant-zero channel stays 0


def test_rpq_codes_clustered_vectors_closely_and_beats_one_stage() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 8)).astype(np.float32)
    x = centres[rng.integers(0, 40, 4000)] + 0.05 * rng.normal(size=(4000, 8)).astype(np.float32)
    book2 = codecs.rpq_train(x, subspaces=2, stages=2, seed=0)
    assert book2.shape == (2, 2, 16, 4)
    codes = codecs.rpq_encode(x, book2)
    assert codes.shape == (4000, 2, 2) and codes.max() < 16
    rel = np.linalg.norm(codecs.rpq_decode(codes, book2) - x, axis=1) / np.linalg.norm(x, axis=1)
    book1 = codecs.rpq_train(x, subspaces=2, stages=1, seed=0)
    rel1 = np.linalg.norm(codecs.rpq_decode(codecs.rpq_encode(x, book1), book1) - x, axis=1) / np.linalg.norm(x, axis=1)
    assert np.median(rel) < 0.25 and np.median(rel) < 0.7 * np.median(rel1)


@pytest.mark.parametrize("m,stages,n_bytes", [(8, 2, 8), (8, 3, 12), (3, 3, 5)])
def test_nibbles_round_trip(m: int, stages: int, n_bytes: int) -> None:
    codes = np.random.default_rng(0).integers(0, 16, size=(100, m, stages)).astype(np.uint8)
    packed = codecs.pack_nibbles(codes)
    assert packed.shape == (100, n_bytes) and packed.dtype == np.uint8
    np.testing.assert_array_equal(codecs.unpack_nibbles(packed, m, stages), codes)


def test_rpq_refuses_channels_that_do_not_split() -> None:
    with pytest.raises(ValueError, match="do not split"):
        codecs.rpq_train(np.zeros((10, 6), np.float32), subspaces=4)
