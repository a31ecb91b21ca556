"""The optional UAE semantic head of the tiny network and initialising it from older checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from uae_ray.models import EmbeddingConfig, EmbeddingNet, embed_array, load_model, save_checkpoint
from uae_ray.models.checkpoint import init_from_checkpoint

SMALL = EmbeddingConfig(widths=(8, 16, 16), blocks=(1, 1, 1), dilations=(), fpn_dim=16, local_dim=16, global_dim=16)


def test_no_head_by_default() -> None:
    model = EmbeddingNet(SMALL)
    assert not model.has_semantic
    assert not any(k.startswith("semantic_head.") for k in model.state_dict())
    assert set(model(torch.zeros(1, 1, 16, 16, 16))) == {"local", "global"}


def test_semantic_output_on_the_local_grid_and_normalised() -> None:
    torch.manual_seed(0)
    model = EmbeddingNet(replace(SMALL, semantic_dim=8)).eval()
    assert model.has_semantic
    with torch.no_grad():
        out = model(torch.randn(2, 1, 24, 32, 40))
    assert out["semantic"].shape == (2, 8, *out["local"].shape[2:])
    torch.testing.assert_close(out["semantic"].norm(dim=1), torch.ones(2, 12, 16, 20), atol=1e-5, rtol=0)
    arrays = embed_array(model, np.zeros((16, 16, 16), np.float32))
    assert set(arrays) == {"local", "global", "semantic"} and arrays["semantic"].shape == (8, 8, 8, 8)


def test_checkpoint_with_head_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = EmbeddingNet(replace(SMALL, semantic_dim=8)).eval()
    path = tmp_path / "sem.pt"
    save_checkpoint(model, path, {"version": "tiny-sem"})
    loaded = load_model(path)
    assert loaded.config.semantic_dim == 8 and loaded.has_semantic
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["semantic"], model.half().float()(x)["semantic"], atol=2e-3, rtol=0)


def test_init_from_checkpoint_without_head(tmp_path: Path) -> None:
    """An older checkpoint (no head) initialises a model with the head: every other weight is
    loaded, the head stays as initialised."""
    torch.manual_seed(2)
    old = EmbeddingNet(SMALL)
    path = tmp_path / "old.pt"
    save_checkpoint(old, path, {"version": "tiny-old"})
    model = EmbeddingNet(replace(SMALL, semantic_dim=8))
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("semantic_head.")}
    missing = init_from_checkpoint(model, path)
    assert sorted(missing) == sorted(head_before)
    state, old_state = model.state_dict(), old.state_dict()
    for k, v in old_state.items():
        torch.testing.assert_close(state[k], v.half().float() if v.is_floating_point() else v)
    for k, v in head_before.items():
        assert torch.equal(state[k], v)
    assert model.version.startswith("tiny-old+")
    # the same file into a model without the head: nothing missing
    assert init_from_checkpoint(EmbeddingNet(SMALL), path) == []


def test_init_from_checkpoint_refuses_other_differences(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    save_checkpoint(EmbeddingNet(SMALL), path)
    with pytest.raises(ValueError, match="only an added semantic head"):
        init_from_checkpoint(EmbeddingNet(replace(SMALL, local_dim=8, semantic_dim=8)), path)
    sem = tmp_path / "sem.pt"
    save_checkpoint(EmbeddingNet(replace(SMALL, semantic_dim=8)), sem)
    with pytest.raises(ValueError, match="cannot initialise"):  # a head of another width
        init_from_checkpoint(EmbeddingNet(replace(SMALL, semantic_dim=4)), sem)
    # a file claiming the right config but lacking a non-semantic key
    data = torch.load(path, weights_only=True)
    del data["state_dict"]["lat1.weight"]
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="lat1.weight"):
        init_from_checkpoint(EmbeddingNet(replace(SMALL, semantic_dim=8)), tmp_path / "broken.pt")
