"""The training loop reduces the loss on a tiny overfit problem; CLI parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from uae_ray.models import EmbeddingConfig, load_model
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.train.config import TrainConfig
from uae_ray.train.loop import parse_args
from uae_ray.train.trainer import Trainer

from uae_ray.train.data import TrainVolume


def _trainer(vols: list[TrainVolume], steps: int, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    cfg = EmbeddingConfig(widths=(8, 16, 16), blocks=(1, 1, 1), dilations=(), fpn_dim=16, local_dim=16, global_dim=16)
    tc = TrainConfig(
        steps=steps, crop=(32, 32, 32), lr=3e-3, warmup_steps=1, local_points=64, global_points=16,
        k_hard=16, k_random=16, max_offset_vox=4, log_every=5, seed=seed,
    )
    return Trainer(EmbeddingNet(cfg), vols, tc)


def test_loss_decreases_on_tiny_problem(phantom_volumes) -> None:
    trainer = _trainer(phantom_volumes, steps=40)
    state = trainer.fit()
    losses = [h["loss"] for h in state.history]
    assert state.step == 40 and len(losses) == 8
    assert np.mean(losses[-2:]) < np.mean(losses[:1]) - 0.2, losses


def test_time_budget_stops_training(phantom_volumes) -> None:
    trainer = _trainer(phantom_volumes, steps=10_000)
    trainer.cfg.seconds = 1.0
    state = trainer.fit()
    assert 0 < state.step < 10_000


def test_parse_args() -> None:
    args = parse_args(["--data", "d", "--steps", "5", "--out", "o.pt", "--threads", "2", "--seconds", "9"])
    assert (args.data, args.steps, args.out, args.threads, args.seconds) == ("d", 5, "o.pt", 2, 9.0)


def test_train_entry_point_writes_checkpoint(tmp_path: Path, monkeypatch, phantom_volumes) -> None:
    import uae_ray.train.loop as loop

    monkeypatch.setattr(loop, "load_volumes", lambda data_dir, modalities, **kw: phantom_volumes)
    out = tmp_path / "m.pt"
    state = loop.main(["--data", "unused", "--split", "none", "--steps", "2", "--out", str(out), "--log-every", "1"])
    assert state.step == 2 and out.is_file()
    model = load_model(out)
    assert model.meta["steps"] == 2 and model.meta["trained_on"] == ["p0", "p1"] and model.meta["split"] == ""
    assert (tmp_path / "m.resume.pt").is_file()  # a killed run of the same command continues with --resume
    assert "--steps 2" in model.meta["command"]


def test_one_step_of_the_published_architecture(phantom_volumes) -> None:
    """sam-r18 (per-axis global stride 4x16x16) trains with the same loop and loss."""
    from uae_ray.models import build_model

    torch.manual_seed(0)
    model = build_model("sam-r18")
    tc = TrainConfig(steps=1, crop=(16, 48, 48), warmup_steps=1, local_points=32, global_points=8,
                     k_hard=8, k_random=8, max_offset_vox=2, log_every=1, global_ignore_mm=8.0)
    before = next(model.parameters()).detach().clone()
    state = Trainer(model, phantom_volumes, tc).fit()
    assert state.step == 1 and np.isfinite(state.history[0]["loss"]) and state.history[0]["global"] > 0
    assert not torch.equal(before, next(model.parameters()).detach())
