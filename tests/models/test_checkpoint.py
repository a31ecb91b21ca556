"""Checkpoint round trip, version string and the shipped default weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from uae_ray.models import EmbeddingConfig, build_model, default_checkpoint, embed_array, load_model, save_checkpoint
from uae_ray.models.checkpoint import file_sha256, read_checkpoint


def test_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    path = tmp_path / "ckpt.pt"
    version = save_checkpoint(model, path, {"trained_on": ["x"], "command": "test", "steps": 1, "time_s": 0.1})
    assert version == f"tiny-v0+{file_sha256(path)[:8]}"
    data = read_checkpoint(path)
    assert EmbeddingConfig.from_dict(data["config"]) == model.config
    assert data["meta"]["steps"] == 1
    assert all(v.dtype == torch.float16 for v in data["state_dict"].values() if v.is_floating_point())

    loaded = load_model(path)
    assert not loaded.training
    assert loaded.version == version
    x = np.random.default_rng(0).uniform(-1, 1, (16, 24, 32)).astype(np.float32)
    a, b = embed_array(model.half().float(), x), embed_array(loaded, x)
    for key in ("local", "global"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-4)


def test_config_mismatch(tmp_path: Path) -> None:
    from uae_ray.models.checkpoint import load_checkpoint_into
    from uae_ray.models.resnet_fpn import EmbeddingNet

    path = tmp_path / "small.pt"
    save_checkpoint(EmbeddingNet(EmbeddingConfig(widths=(8, 8, 8))), path)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint_into(build_model("tiny"), path)
    assert load_model(path).config.widths == (8, 8, 8)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.pt")


def test_shipped_default_weights() -> None:
    path = default_checkpoint()
    assert path.is_file(), f"shipped weights missing: {path}"
    assert path.stat().st_size < 10 * 2**20
    model = load_model()
    assert re.fullmatch(r"tiny-uae-v3\+[0-9a-f]{8}", model.version) and model.config.semantic_dim > 0
    meta = read_checkpoint(path)["meta"]
    assert {"trained_on", "command", "steps", "time_s", "version"} <= set(meta)
    assert meta["steps"] > 0


def test_shipped_weights_load_by_name():
    from uae_ray.models import SHIPPED_WEIGHTS, default_checkpoint, load_model, resolve_checkpoint

    assert resolve_checkpoint(None) == default_checkpoint() == resolve_checkpoint("tiny-uae-v3")
    for name in SHIPPED_WEIGHTS:
        path = resolve_checkpoint(name)
        assert path.is_file() and path.stat().st_size < 5_000_000, path  # small, in the repo
    model = load_model("tiny-ctmr-v1")
    assert model.version.startswith("tiny-v1+") and "sts_001_mr_t1" in model.meta["trained_on"]
