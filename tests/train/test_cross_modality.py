"""UAE cross-modality stage: MR data, modality augmentation, aligned CT-MR pairs, YAML config.

Tests marked ``data`` use the four STS cases of ../shared/data (skipped when it is absent).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from uae_ray.models import EmbeddingConfig, load_model
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.train.augment import RandomModalityShift, piecewise_linear, sample_at, voxel_grid
from uae_ray.train.config_io import dump_yaml_config, load_yaml_config
from uae_ray.train.data import MR_BODY_LEVEL, TrainVolume, body_level, load_volumes, read_manifest
from uae_ray.train.config import TrainConfig, config_from_args
from uae_ray.train.items import view_body_mask
from uae_ray.train.loop import parse_args
from uae_ray.train.trainer import Trainer
from uae_ray.train.pairs import CrossModalPair, build_pairs, find_ct_mr_pairs
from uae_ray.train.sampling import find_correspondences
from uae_ray.volume import model_grid, prepare_volume, read_image

STS_PAIRS = [("sts_001_ct", "sts_001_mr_t1"), ("sts_002_ct", "sts_002_mr_t1")]
STS_CASES = [c for pair in STS_PAIRS for c in pair]


def _tiny_trainer(vols: list[TrainVolume], **overrides) -> Trainer:
    torch.manual_seed(0)
    net = EmbeddingConfig(widths=(8, 16, 16), blocks=(1, 1, 1), dilations=(), fpn_dim=16, local_dim=16, global_dim=16)
    kw = dict(
        steps=2, crop=(32, 32, 32), warmup_steps=1, local_points=32, global_points=8, k_hard=8, k_random=8,
        candidate_pool=512, max_offset_vox=4, log_every=1, seed=0,
    )
    kw.update(overrides)
    return Trainer(EmbeddingNet(net), vols, TrainConfig(**kw))


@pytest.fixture(scope="module")
def sts_volumes(shared_data: Path) -> list[TrainVolume]:
    """The two STS CT-MR pairs, prepared for training (about 3 s)."""
    return load_volumes(shared_data, ("CT", "MR"), case_ids=STS_CASES)


@pytest.fixture(scope="module")
def sts_pairs(sts_volumes: list[TrainVolume]) -> list[CrossModalPair]:
    return build_pairs(sts_volumes)


# -- MR data ---------------------------------------------------------------------------------------


@pytest.mark.data
def test_mr_volumes_load_with_patient_and_geometry(shared_data: Path) -> None:
    rows = {c.case_id: c for c in read_manifest(shared_data)}
    vols = load_volumes(shared_data, ("MR",), case_ids=["sts_002_mr_t1", "ts_example_mr"])
    assert [v.case_id for v in vols] == ["sts_002_mr_t1", "ts_example_mr"]
    for v in vols:
        row = rows[v.case_id]
        assert v.modality == "MR" and v.patient == row.patient and v.patient
        image = read_image(row.image_path)
        pv = prepare_volume(image, "MR", spacing_mm=2.0, pad_multiple=1)  # exactly what inference does
        assert v.grid == pv.grid == model_grid(image, 2.0, 1)
        assert v.grid.spacing == (2.0, 2.0, 2.0) and np.allclose(v.grid.direction_matrix, np.eye(3))
        assert torch.equal(v.data[0], torch.from_numpy(pv.array + 1.0))
        assert torch.equal(v.data[1], torch.from_numpy(pv.valid.astype(np.float32)))
        # view centres are MR body voxels: valid and above the MR (not the CT HU) level
        z, y, x = v.centres[:, 2].astype(int), v.centres[:, 1].astype(int), v.centres[:, 0].astype(int)
        assert bool((v.data[1, z, y, x] == 1).all()) and bool((v.data[0, z, y, x] - 1 > MR_BODY_LEVEL).all())
        body_fraction = float(((v.data[0] - 1 > MR_BODY_LEVEL) & (v.data[1] > 0)).sum() / v.data[1].sum())
        assert 0.3 < body_fraction < 0.95, body_fraction
    assert body_level("MR") == MR_BODY_LEVEL != body_level("CT")


# -- pairs -----------------------------------------------------------------------------------------


def test_pair_finder_on_synthetic_rows() -> None:
    rows = [
        SimpleNamespace(case_id="a_ct", modality="CT", patient="pa"),
        SimpleNamespace(case_id="a_mr", modality="mr", patient="pa"),
        SimpleNamespace(case_id="b_ct", modality="CT", patient="pb"),
        SimpleNamespace(case_id="c_mr", modality="MR", patient="pc"),
        SimpleNamespace(case_id="x_ct", modality="CT", patient=""),
        SimpleNamespace(case_id="x_mr", modality="MR", patient=""),
    ]
    assert find_ct_mr_pairs(rows) == [("a_ct", "a_mr")]


@pytest.mark.data
def test_pair_finder_finds_the_sts_pairs(shared_data: Path, sts_pairs: list[CrossModalPair]) -> None:
    found = find_ct_mr_pairs(read_manifest(shared_data))
    expected = [(f"sts_{n:03d}_ct", f"sts_{n:03d}_mr_t1") for n in (1, 2, *range(4, 14))]
    assert found == expected  # the 12 STS patients with a CT and an MR, nothing else
    assert [p.case_ids for p in sts_pairs] == STS_PAIRS
    for pair in sts_pairs:
        # offset = difference of the two grid origins, in 2 mm voxels
        expected = (np.asarray(pair.ct.grid.origin) - np.asarray(pair.mr.grid.origin)) / 2.0
        np.testing.assert_allclose(pair.offset_vox, expected, atol=1e-12)
        # every view centre is in the overlap: CT valid, MR valid (the MR covers less than the CT)
        at_ct = sample_at(pair.ct.data, torch.from_numpy(pair.centres))
        at_mr = sample_at(pair.mr.data, torch.from_numpy(pair.ct_to_mr(pair.centres)))
        assert bool((at_ct[1] > 0.99).all()) and bool((at_mr[1] > 0.99).all())
        assert 100 < len(pair.centres) < len(pair.ct.centres)


@pytest.mark.data
def test_cross_modal_correspondences_exact_in_world(sts_volumes, sts_pairs) -> None:
    trainer = _tiny_trainer(sts_volumes, pair_prob=1.0)
    rng = np.random.default_rng(0)
    stride = 2
    map_shape = (16, 16, 16)
    for pair in sts_pairs:
        ct_grid, mr_grid = pair.ct.grid, pair.mr.grid
        for _ in range(3):
            item = trainer.pair_item(pair)
            assert item.case_ids == pair.case_ids
            va, vb = item.views
            vb_mr = pair.view_in_mr(vb)
            raw_a, raw_b = item.raw
            ok = view_body_mask(raw_a, (stride,) * 3, item.body_levels[0])
            corr = find_correspondences(va, vb, map_shape, stride, ok, raw_b[1], 64, rng)
            assert len(corr) > 5
            # anchor -> CT voxel -> world, and target -> MR voxel (B's geometry in the MR frame) -> world
            world_a = ct_grid.index_to_world(va.to_volume(stride * corr.anchor_idx.numpy()))
            world_b = mr_grid.index_to_world(vb_mr.to_volume(stride * corr.target_pos.numpy()))
            assert np.abs(world_a - world_b).max() < 1e-6
            # the extracted MR view holds the MR volume sampled at the voxel's world point
            u = voxel_grid(vb.size, torch.float64).reshape(-1, 3)[rng.choice(32**3, 300, replace=False)]
            world_u = ct_grid.index_to_world(vb.to_volume(u.numpy()))
            mr_vox = torch.from_numpy(mr_grid.world_to_index(world_u))
            expected = sample_at(pair.mr.data, mr_vox) - torch.tensor([[1.0], [0.0]])
            got = raw_b[:, u[:, 2].long(), u[:, 1].long(), u[:, 0].long()]
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
            # outside the MR field of view: validity 0 and air
            outside = raw_b[1] < 1e-6
            assert bool((raw_b[0][outside] == -1.0).all())


@pytest.mark.data
def test_batches_use_distinct_patients(sts_volumes) -> None:
    trainer = _tiny_trainer(sts_volumes, batch_scans=2, pair_prob=0.5)
    kinds = set()
    for _ in range(6):
        batch = trainer.make_batch()
        patients = [next(v.patient for v in sts_volumes if v.case_id == item.case_ids[0]) for item in batch]
        assert len(batch) == 2 and len(set(patients)) == 2
        kinds.update(item.case_ids[0] != item.case_ids[1] for item in batch)
    assert kinds == {True, False}  # both pairs and single volumes were drawn


# -- modality augmentation -------------------------------------------------------------------------


def _body_view() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.full((1, 8, 8, 8), -1.0)
    x[:, 2:6, 2:6, 2:6] = torch.linspace(-0.8, 0.9, 64).reshape(1, 4, 4, 4)
    return x, x > -0.9


def test_modality_shift_inverts_body_and_keeps_air() -> None:
    x, body = _body_view()
    y = RandomModalityShift(prob=1.0, invert_prob=1.0, strength=0.0, seed=0)(x, body)
    torch.testing.assert_close(y[body], -x[body])
    assert torch.equal(y[~body], x[~body]) and bool((y[~body] == -1.0).all())
    # outside the validity mask nothing changes, even inside a bright region
    valid = torch.zeros_like(body)
    valid[:, :, :, :4] = True
    y = RandomModalityShift(prob=1.0, invert_prob=1.0, strength=0.0, seed=0)(x, body & valid)
    assert torch.equal(y[~valid], x[~valid])


def test_modality_shift_histogram_is_monotone_and_keeps_range() -> None:
    x = torch.linspace(-1, 1, 1001)
    shift = RandomModalityShift(prob=1.0, invert_prob=0.0, strength=0.9, segments=5, body_level=-2.0, seed=3)
    for _ in range(5):
        y = shift(x)
        assert bool((y[1:] >= y[:-1]).all())
        assert abs(float(y[0]) + 1) < 1e-6 and abs(float(y[-1]) - 1) < 1e-6
        assert float((y - x).abs().max()) > 0.02  # really shifted
    kx, ky = shift.random_curve()
    pts = torch.rand(50, dtype=torch.float64) * 2 - 1
    np.testing.assert_allclose(piecewise_linear(pts, kx, ky).numpy(), np.interp(pts.numpy(), kx.numpy(), ky.numpy()), atol=1e-12)


def test_modality_shift_seeded_and_probability() -> None:
    x, body = _body_view()
    a = RandomModalityShift(prob=1.0, seed=5)(x, body)
    b = RandomModalityShift(prob=1.0, seed=5)(x, body)
    c = RandomModalityShift(prob=1.0, seed=6)(x, body)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert RandomModalityShift(prob=0.0, seed=5)(x, body) is x
    with pytest.raises(ValueError):
        RandomModalityShift(strength=1.0)


# -- configuration ---------------------------------------------------------------------------------


def test_yaml_config_and_cli_overrides(tmp_path: Path) -> None:
    f = tmp_path / "uae.yaml"
    f.write_text("steps: 50\nlr: 2e-3\ncrop: [32, 48, 64]\nmodalities: [ct, MR]\nmodality_shift_prob: 0.5\npair_prob: 0.5\n")
    args = parse_args(["--data", "d", "--config", str(f), "--pair-prob", "0.25", "--steps", "7"])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.pair_prob) == (7, 0.25)  # CLI wins
    assert (cfg.lr, cfg.crop, cfg.modalities, cfg.modality_shift_prob) == (0.002, (32, 48, 64), ("CT", "MR"), 0.5)
    assert cfg.batch_scans == TrainConfig.batch_scans  # neither file nor flag: default
    # entry-point defaults < YAML < flags
    assert config_from_args(parse_args(["--data", "d"]), {"steps": 200}).steps == 200
    assert config_from_args(parse_args(["--data", "d", "--config", str(f)]), {"steps": 200}).steps == 50
    # round trip, and typos are errors
    dump_yaml_config(cfg, tmp_path / "out.yaml")
    assert load_yaml_config(TrainConfig, tmp_path / "out.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("pair_probability: 0.3\n")
    with pytest.raises(ValueError, match="pair_probability"):
        config_from_args(parse_args(["--data", "d", "--config", str(tmp_path / "bad.yaml")]))
    with pytest.raises(ValueError):
        TrainConfig(pair_prob=1.5)


# -- training --------------------------------------------------------------------------------------


@pytest.mark.data
def test_two_step_cross_modal_training(sts_volumes) -> None:
    trainer = _tiny_trainer(sts_volumes, pair_prob=1.0, modality_shift_prob=1.0, batch_scans=2)
    assert len(trainer.pairs) == 2
    batch = trainer.make_batch()
    assert sorted(item.case_ids for item in batch) == STS_PAIRS
    loss, parts = trainer.compute_loss(batch)
    assert math.isfinite(parts["loss"]) and parts["local"] > 0 and parts["global"] > 0
    state = trainer.fit()
    assert state.step == 2 and all(math.isfinite(h["loss"]) for h in state.history)


@pytest.mark.data
def test_cli_run_records_pairs_and_config(tmp_path: Path, monkeypatch, sts_volumes) -> None:
    import uae_ray.train.loop as loop

    monkeypatch.setattr(loop, "load_volumes", lambda data_dir, modalities, **kw: sts_volumes)
    f = tmp_path / "c.yaml"
    f.write_text("crop: [32, 32, 32]\nlocal_points: 16\nglobal_points: 4\nk_hard: 4\nk_random: 4\nmax_offset_vox: 2\n")
    out = tmp_path / "m.pt"
    state = loop.main([
        "--data", "unused", "--split", "none", "--config", str(f), "--steps", "1", "--log-every", "1", "--out", str(out),
        "--modalities", "CT", "MR", "--pair-prob", "1", "--modality-shift-prob", "1", "--threads", "1",
    ])
    assert state.step == 1 and math.isfinite(state.history[-1]["loss"])
    meta = load_model(out).meta
    assert meta["cross_modal_pairs"] == [list(p) for p in STS_PAIRS]
    tc = meta["train_config"]
    assert tc["pair_prob"] == 1.0 and tc["modality_shift_prob"] == 1.0 and list(tc["modalities"]) == ["CT", "MR"]
    assert list(tc["crop"]) == [32, 32, 32] and "--pair-prob 1" in meta["command"]
