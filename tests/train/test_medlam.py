"""MedLAM self-supervised training (uae_ray.train.medlam): pair sampling and a few loop steps."""

import numpy as np
import torch

from uae_ray.models.medlam import MedLAMConfig, MedLAMNet, load_medlam, save_medlam
from uae_ray.train.medlam import MedLAMTrainConfig, MedLAMTrainer, PairSampler, PatchVolume


def _volume(seed=0) -> PatchVolume:
    g = torch.Generator().manual_seed(seed)
    vol = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 70, 90, 80, generator=g), 5, 1, 2)[0] * 2 - 1
    body = np.argwhere(np.ones((70, 90, 80), bool))[::97][:, ::-1].copy()
    return PatchVolume("synthetic", vol, torch.ones_like(vol), body, 3.0)


def test_pairs_have_the_exact_world_offset():
    cfg = MedLAMTrainConfig(seed=1)
    sampler = PairSampler([_volume()], cfg, patch_size=64)
    near, far = sampler(True), sampler(False)
    for p in (near, far):
        assert p.a.shape == (1, 64, 64, 64) and p.b.shape == (1, 64, 64, 64)
        np.testing.assert_allclose(p.offset_mm, (p.view_b.centre - p.view_a.centre) * 3.0)
    assert np.all(np.abs(near.offset_mm) <= cfg.near_offset_vox * 3.0 + 1e-9)


def test_a_few_steps_train_and_the_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = MedLAMNet(MedLAMConfig(patch_size=32))  # small patches keep the test fast
    trainer = MedLAMTrainer(model, [_volume()], MedLAMTrainConfig(steps=2, seconds=60, pairs_per_step=2, anchors=32))
    state = trainer.fit(log_every=1)
    assert state.step == 2 and len(state.history) == 2
    rec = state.history[-1]
    assert np.isfinite(rec["loss"]) and rec["mss"] > 0 and rec["offset_err_mm"] >= 0
    path = tmp_path / "m.pt"
    version = save_medlam(model, path, {"version": "medlam-test"})
    loaded = load_medlam(path)
    assert loaded.version == version and not loaded.training
    x = torch.zeros(1, 1, 32, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x)["projection"].numpy(), model.eval()(x)["projection"].numpy(), atol=2e-2)
