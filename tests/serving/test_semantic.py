"""The optional SEMANTIC output: in-process and through a real Triton server serving a model
with a semantic head (its own Triton, beside the session stack's, which serves one without)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from uae_ray.matching import embed_prepared
from uae_ray.models import EmbeddingConfig, EmbeddingNet, save_checkpoint
from uae_ray.serving import LocalEmbedder, TritonEmbedder
from uae_ray.volume import Grid, PreparedVolume

TOL = 1e-4
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("sem") / "tiny_sem.pt"
    save_checkpoint(EmbeddingNet(replace(EmbeddingConfig(), semantic_dim=16)), path, meta={"version": "tiny-semtest"})
    return path


def _volume() -> np.ndarray:
    return np.random.default_rng(5).uniform(-1, 1, (16, 32, 24)).astype(np.float32)


def test_local_embedder_returns_semantic(semantic_checkpoint: Path) -> None:
    emb = LocalEmbedder(checkpoint=semantic_checkpoint)
    out = emb.embed(_volume())
    assert set(out) == {"local", "global", "semantic"}
    assert out["semantic"].shape == (16, *out["local"].shape[1:]) and out["semantic"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["semantic"], axis=0), 1.0, atol=1e-4)
    grid = Grid((0.0, 0.0, 0.0), (2.0,) * 3, IDENTITY, (24, 32, 16))
    maps = embed_prepared(PreparedVolume(_volume(), grid, "CT", np.ones((16, 32, 24), bool)), emb)
    assert maps.has_semantic and maps.semantic.shape == (16, 8, 16, 12)


@pytest.fixture(scope="module")
def semantic_triton(tmp_path_factory, semantic_checkpoint: Path, free_port_config) -> Iterator[str]:
    from uae_ray.stack import StackError, stack_down, stack_up

    config = free_port_config(tmp_path_factory.mktemp("sem_triton") / "run", semantic_checkpoint)
    try:
        try:
            stack_up(config, ("triton",))
        except StackError as exc:
            pytest.fail(f"Triton with a semantic model did not start: {exc}", pytrace=False)
        yield config.triton_url
    finally:
        stack_down(config, ("triton",))


@pytest.mark.stack
def test_triton_serves_semantic_like_in_process(semantic_triton: str, semantic_checkpoint: Path) -> None:
    remote = TritonEmbedder(semantic_triton, retries=1, backoff_s=0.1)
    local = LocalEmbedder(checkpoint=semantic_checkpoint)
    assert remote.config == local.config and remote.config.semantic_dim == 16
    assert remote.version == local.version
    a, b = remote.embed(_volume()), local.embed(_volume())
    remote.close()
    assert set(a) == set(b) == {"local", "global", "semantic"}
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == np.float32
        assert float(np.abs(a[key] - b[key]).max()) < TOL, key
