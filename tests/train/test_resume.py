"""Training runs that stop and resume, on body-cropped training volumes (needs ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.train.data import body_crop, load_volumes, prepare_train_volume
from uae_ray.train.config import TrainConfig
from uae_ray.train.items import region_weights
from uae_ray.train.trainer import Trainer
from uae_ray.volume import Grid

CASES = ["openkbp_pt1", "sts_001_ct"]


@pytest.fixture(scope="module")
def volumes(shared_data: Path):
    return load_volumes(shared_data, ("CT",), case_ids=CASES)


def _trainer(vols, **kw) -> Trainer:
    torch.manual_seed(0)
    net = EmbeddingConfig(widths=(8, 16, 16), blocks=(1, 1, 1), dilations=(), fpn_dim=16, local_dim=16, global_dim=16)
    cfg = dict(steps=4, crop=(32, 32, 32), warmup_steps=1, local_points=32, global_points=8, k_hard=8, k_random=8,
               candidate_pool=512, max_offset_vox=4, log_every=2, seed=0)
    cfg.update(kw)
    return Trainer(EmbeddingNet(net), vols, TrainConfig(**cfg))


def test_resumed_run_continues_where_it_stopped(volumes, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop_at_2(rec):
        if rec["step"] == 2:
            raise Stop

    resume = tmp_path / "run.resume.pt"
    first = _trainer(volumes)
    with pytest.raises(Stop):
        first.fit(on_log=stop_at_2, resume_path=resume, resume_every_s=0)
    resumed = _trainer(volumes)
    resumed.load_resume(resume)
    assert resumed.state.step == 2
    resumed.fit()
    straight = _trainer(volumes)
    straight.fit()
    assert resumed.state.step == straight.state.step == 4
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-3, rtol=1e-3)
    # The same views were drawn: the loss history after the resume matches.
    assert resumed.state.history[-1]["loss"] == pytest.approx(straight.state.history[-1]["loss"], rel=1e-3)


def test_resume_refuses_another_config(volumes, tmp_path: Path) -> None:
    resume = tmp_path / "run.resume.pt"
    _trainer(volumes, steps=2).fit(resume_path=resume)
    other = _trainer(volumes, lr=1e-4)
    with pytest.raises(ValueError, match="another training configuration.*lr"):
        other.load_resume(resume)


def test_body_crop_keeps_world_positions(shared_data: Path) -> None:
    image = shared_data / "cases" / "openkbp_pt1" / "image.nii.gz"
    full = prepare_train_volume("openkbp_pt1", image, crop_margin_vox=None)
    cropped = prepare_train_volume("openkbp_pt1", image)
    assert np.prod(cropped.data.shape) < 0.5 * np.prod(full.data.shape)  # a head in a 50 cm field of view
    # Voxel (0, 0, 0) of the crop is the full volume's voxel at the crop offset, in the same place.
    offset = np.rint(full.grid.world_to_index(np.array([cropped.grid.origin]))[0]).astype(int)  # x, y, z
    x, y, z = offset
    assert torch.equal(cropped.data[:, 0, 0, 0], full.data[:, z, y, x])


def test_body_crop_of_an_empty_mask_is_the_whole_grid() -> None:
    grid = Grid((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 5, 6))
    slices, out = body_crop(np.zeros((6, 5, 4), bool), grid, 8)
    assert out == grid and slices == (slice(0, 6), slice(0, 5), slice(0, 4))


def test_region_weights_balance_regions(volumes) -> None:
    groups = [[v] for v in volumes] + [[volumes[0]]]  # two head-neck groups, one thigh
    assert region_weights(groups, 0.0) is None
    w = region_weights(groups, 1.0)
    assert w is not None and sum(w[i] for i in (0, 2)) == pytest.approx(w[1])
