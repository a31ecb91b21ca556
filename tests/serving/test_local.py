"""LocalEmbedder and get_embedder (in-process torch, no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uae_ray.models import build_tiny, save_checkpoint
from uae_ray.serving import LocalEmbedder, get_embedder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(build_tiny(), path, meta={"version": "tiny-test"})
    return path


def test_local_embedder_shapes_and_version(checkpoint: Path) -> None:
    emb = LocalEmbedder(checkpoint=checkpoint)
    assert emb.version.startswith("tiny-test+")
    assert emb.config.name == "tiny"
    vol = np.random.default_rng(0).uniform(-1, 1, (16, 32, 24)).astype(np.float32)
    out = emb.embed(vol)
    assert set(out) == {"local", "global"}
    assert out["local"].shape == (emb.config.local_dim, 8, 16, 12)
    assert out["local"].dtype == np.float32
    assert out["global"].shape[0] == emb.config.global_dim
    np.testing.assert_allclose(np.linalg.norm(out["local"], axis=0), 1.0, atol=1e-4)


def test_local_embedder_rejects_non_3d(checkpoint: Path) -> None:
    emb = LocalEmbedder(checkpoint=checkpoint)
    with pytest.raises(ValueError, match="Z, Y, X"):
        emb.embed(np.zeros((1, 8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="empty"):
        emb.embed(np.zeros((0, 8, 8), np.float32))


def test_get_embedder_is_cached_per_checkpoint(checkpoint: Path) -> None:
    a = get_embedder(None, checkpoint=checkpoint)
    assert isinstance(a, LocalEmbedder)
    assert get_embedder(None, checkpoint=str(checkpoint)) is a
    with pytest.raises(TypeError, match="only apply"):
        get_embedder(None, checkpoint=checkpoint, retries=1)
