"""UAE semantic head training: labels follow the views, the prototype loss, real training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uae_ray.models import EmbeddingConfig
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.train.augment import RandomAffineView, ViewGeometry, extract_labels, extract_view, rotation_matrix
from uae_ray.train.config_io import load_yaml_config
from uae_ray.train.data import TrainVolume, load_volumes
from uae_ray.train.losses import BACKGROUND, IGNORE, class_prototypes, prototype_loss
from uae_ray.train.config import TrainConfig
from uae_ray.train.items import remap_labels
from uae_ray.train.trainer import Trainer, build_train_model
from uae_ray.train.pairs import build_pairs
from uae_ray.volume import Grid

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
CONFIGS = Path(__file__).resolve().parents[2] / "uae_ray" / "train" / "configs"
STEP = 0.1  # intensity = -1 + STEP * (label + 1): every label (0 too) is 'body' for CT


def label_phantom(shape: tuple[int, int, int] = (48, 48, 48), seed: int = 0) -> np.ndarray:
    """(Z, Y, X) int16 labels: six random boxes (ids 1..6, at least 6 voxels a side) on 0."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    for i in range(1, 7):
        lo = [int(rng.integers(2, n - 16)) for n in shape]
        size = [int(rng.integers(6, 14)) for _ in shape]
        lab[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = i
    return lab


def labelled_volume(lab: np.ndarray, case_id: str = "lab", offset_mm=(0.0, 0.0, 0.0), id_shift: int = 0,
                    modality: str = "CT", patient: str = "") -> TrainVolume:
    """A training volume whose intensity encodes its label map (2 mm world grid at ``offset_mm``)."""
    arr = (-1.0 + STEP * (lab.astype(np.float32) + 1.0)).astype(np.float32)
    data = torch.from_numpy(np.stack([arr + 1.0, np.ones_like(arr)]))
    zyx = np.argwhere(lab >= 0)[:: 7]
    ids = np.where(lab > 0, lab + id_shift, 0).astype(np.int16)
    names = {i + id_shift: f"organ{i}" for i in np.unique(lab) if i > 0}
    grid = Grid(tuple(offset_mm), (2.0,) * 3, IDENTITY, lab.shape[::-1])
    return TrainVolume(case_id, data, zyx[:, ::-1].astype(np.float64).copy(), modality, patient, grid,
                       torch.from_numpy(ids), names)


def labels_from_intensity(x: torch.Tensor) -> torch.Tensor:
    return torch.round((x + 1.0) / STEP - 1.0).long()


def test_labels_follow_every_geometric_augmentation() -> None:
    """Strong rotation, per-axis scale and offsets: the nearest-neighbour label view equals the
    label encoded in the trilinear image view wherever the image is not mixed by interpolation."""
    lab = label_phantom()
    vol = labelled_volume(lab)
    onehot = F.one_hot(vol.labels.long(), 7).permute(3, 0, 1, 2).float()  # (7, Z, Y, X)
    views = RandomAffineView((40, 40, 40), max_rotation_deg=40.0, scale_range=(0.7, 1.3), max_offset_vox=8.0, seed=3)
    for k in range(4):
        for view in views(np.array([24.0, 24.0, 24.0]) + k):
            image = extract_view(vol.data, view, pad_value=0.0)[0] - 1.0
            labels = extract_labels(vol.labels, view)
            # where the 8 volume voxels around a view voxel share one label, the trilinear image
            # encodes exactly that label, and the nearest-neighbour label must be it too
            grid = torch.stack(torch.meshgrid(*[torch.arange(40, dtype=torch.float64)] * 3, indexing="ij")[::-1], dim=-1)
            pts = view.to_volume_torch(grid)
            inside = ((pts >= 0) & (pts <= 47.0)).all(dim=-1)
            base = torch.floor(pts).long().clamp(0, 46)
            lab_t = vol.labels.long()
            corners = torch.stack([lab_t[base[..., 2] + dz, base[..., 1] + dy, base[..., 0] + dx]
                                   for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)])
            pure = inside & (corners == corners[0]).all(dim=0)
            assert pure.float().mean() > 0.7
            assert torch.equal(labels[pure].long(), corners[0][pure])
            assert torch.equal(labels_from_intensity(image)[pure], corners[0][pure])
            # everywhere (boundaries included): the label with the largest trilinear weight (a
            # one-hot intensity channel per label) is the nearest-neighbour label, up to ties at
            # boundaries, and far more often than for labels taken with a slightly other geometry
            soft = extract_view(onehot, view, pad_value=0.0).argmax(dim=0)
            agree = (labels.long() == soft)[inside].float().mean()
            assert agree > 0.95, float(agree)
            off = ViewGeometry(view.matrix @ rotation_matrix(np.deg2rad([0.0, 0.0, 8.0])), view.centre + 1.0, view.size)
            wrong = (extract_labels(vol.labels, off).long() == soft)[inside & (soft > 0)].float().mean()
            assert wrong < (labels.long() == soft)[inside & (soft > 0)].float().mean() - 0.15
            assert int(labels[~inside].abs().sum()) == 0  # outside the volume: 0
            # strided extraction = every stride-th view voxel
            assert torch.equal(extract_labels(vol.labels, view, (2, 2, 2)), labels[::2, ::2, ::2])


def _semantic_trainer(vols: list[TrainVolume], **kw) -> Trainer:
    torch.manual_seed(0)
    cfg = EmbeddingConfig(widths=(8, 16, 16), blocks=(1, 1, 1), dilations=(), fpn_dim=16, local_dim=16, global_dim=16,
                          semantic_dim=8)
    tc = TrainConfig(steps=2, crop=(32, 32, 32), lr=3e-3, warmup_steps=1, local_points=32, global_points=8, k_hard=8,
                     k_random=8, max_offset_vox=4, log_every=1, semantic_weight=0.5, max_rotation_deg=30.0,
                     scale_range=(0.75, 1.25), **kw)
    return Trainer(EmbeddingNet(cfg), vols, tc)


def test_training_items_carry_labels_aligned_with_the_views() -> None:
    """Single-volume and CT-MR pair items: the labels on the semantic grid match the (raw) view
    intensities voxel-wise; the MR's own label ids are mapped to the CT's by name."""
    lab = label_phantom(seed=1)
    ct = labelled_volume(lab, "ct", patient="p")
    # the 'MR': same anatomy on a grid shifted by (6, -4, 10) voxels, labels with other ids
    shift = np.array([6, -4, 10])  # x, y, z voxels
    mr_lab = np.zeros_like(lab)
    src = lab[max(0, shift[2]) :, max(0, shift[1]) :, max(0, shift[0]) :]
    mr_lab[: src.shape[0], : src.shape[1], : src.shape[2]] = src
    mr = labelled_volume(mr_lab, "mr", offset_mm=tuple(2.0 * np.maximum(shift, 0)), id_shift=20, modality="MR", patient="p")
    # MR intensity should encode the *CT* label ids so the two views can be compared directly
    mr.data[0] = torch.from_numpy(STEP * (mr_lab.astype(np.float32) + 1.0))
    pairs = build_pairs([ct, mr], min_centres=8)
    assert len(pairs) == 1
    trainer = _semantic_trainer([ct, mr], pair_prob=1.0)
    assert trainer.pairs
    for item in (trainer.single_item(ct), trainer.pair_item(pairs[0]), trainer.pair_item(pairs[0])):
        assert item.labels is not None and item.label_names == ct.label_names
        for v in (0, 1):
            raw = item.raw[v]
            sub = raw[:, ::2, ::2, ::2]
            valid = sub[1] > 0.999
            enc = labels_from_intensity(sub[0])
            agree = (item.labels[v] == enc)[valid].float().mean()
            assert agree > 0.95, (v, float(agree))
            assert set(item.labels[v][valid].unique().tolist()) <= {0, *ct.label_names}


def test_remap_labels_by_name() -> None:
    lab = torch.tensor([0, 21, 22, 23, 5])
    out = remap_labels(lab, {21: "liver", 22: "spleen", 23: "tumour", 5: "x"}, {1: "spleen", 2: "liver"})
    assert out.tolist() == [0, 2, 1, IGNORE, IGNORE]


def test_prototype_loss_prefers_separated_organs() -> None:
    rng = torch.Generator().manual_seed(0)
    n, k, c = 600, 4, 16
    labels_a = torch.randint(0, k + 1, (n,), generator=rng)
    labels_b = torch.randint(0, k + 1, (n,), generator=rng)
    centres = F.normalize(torch.randn(k + 1, c, generator=rng), dim=1)

    def separated(lab: torch.Tensor) -> torch.Tensor:
        return F.normalize(centres[lab] + 0.05 * torch.randn(len(lab), c, generator=rng), dim=1)

    good = prototype_loss(separated(labels_a), labels_a, separated(labels_b), labels_b, 0.1, generator=rng)
    rand = prototype_loss(F.normalize(torch.randn(n, c, generator=rng), dim=1), labels_a,
                          F.normalize(torch.randn(n, c, generator=rng), dim=1), labels_b, 0.1, generator=rng)
    assert good is not None and rand is not None
    assert float(good) < 0.1 < 1.0 < float(rand)
    # separated but swapped organs in B: worse than random
    swapped = prototype_loss(separated(labels_a), labels_a, separated((labels_b % k) + 1), labels_b, 0.1, generator=rng)
    assert float(swapped) > float(rand)


def test_prototype_loss_edge_cases() -> None:
    emb = F.normalize(torch.randn(50, 8), dim=1)
    none = torch.full((50,), BACKGROUND)
    assert prototype_loss(emb, none, emb, none) is None  # no organ
    only_a = torch.cat([torch.ones(25, dtype=torch.long), torch.zeros(25, dtype=torch.long)])
    assert prototype_loss(emb, only_a, emb, none) is None  # organ not in both views
    ignored = torch.full((50,), IGNORE)
    ignored[:20] = 1
    assert prototype_loss(emb, ignored, emb, ignored) is None  # one class, no background, no extras
    extra = F.normalize(torch.randn(3, 8), dim=1)
    loss = prototype_loss(emb, ignored, emb, ignored, extra=extra)
    assert loss is not None and float(loss) > 0
    masked = prototype_loss(emb, ignored, emb, ignored, extra=extra, extra_ok=lambda ids: torch.zeros(len(ids), 3, dtype=torch.bool))
    assert float(masked) == pytest.approx(0.0, abs=1e-6)  # every negative masked: nothing to contrast
    protos = class_prototypes(emb, ignored, torch.tensor([1]))
    torch.testing.assert_close(protos[0], F.normalize(emb[:20].mean(0), dim=0))


def test_build_train_model_adds_the_head_to_an_older_checkpoint(tmp_path: Path) -> None:
    from uae_ray.models import build_tiny, save_checkpoint

    torch.manual_seed(0)
    old = build_tiny()
    path = tmp_path / "old.pt"
    save_checkpoint(old, path)
    plain = build_train_model(TrainConfig(), path)
    assert plain.config.semantic_dim == 0
    model = build_train_model(TrainConfig(semantic_weight=0.5), path)
    assert model.config.semantic_dim == 32 and model.has_semantic
    torch.testing.assert_close(model.stem[0][0].weight, old.stem[0][0].weight.half().float())
    assert build_train_model(TrainConfig(semantic_weight=0.5, semantic_dim=16)).config.semantic_dim == 16
    with pytest.raises(ValueError, match="semantic head"):
        Trainer(plain, [labelled_volume(label_phantom())], TrainConfig(semantic_weight=0.5))


def test_tiny_uae_v2_config_reads() -> None:
    cfg = load_yaml_config(TrainConfig, CONFIGS / "tiny-uae-v2.yaml")
    assert cfg.semantic_weight > 0 and cfg.semantic_dim in (32, 64) and cfg.semantic_temperature == pytest.approx(0.1)
    assert cfg.modalities == ("CT", "MR") and cfg.pair_prob == 0.25 and cfg.seconds == 1800


@pytest.fixture(scope="module")
def real_volumes(shared_data: Path) -> dict[str, TrainVolume]:
    """A labelled (8 head-neck organs) and an unlabelled real CT."""
    vols = load_volumes(shared_data, ("CT",), case_ids=["matrad_hn_frm2", "invesalius_cranium"])
    return {v.case_id: v for v in vols}


def _real_trainer(vol: TrainVolume) -> Trainer:
    torch.manual_seed(0)
    model = build_train_model(TrainConfig(semantic_weight=0.5))
    tc = TrainConfig(steps=10, batch_scans=1, crop=(48, 48, 48), lr=1e-3, warmup_steps=1, local_points=64,
                     global_points=16, k_hard=16, k_random=16, semantic_weight=0.5, seed=1)
    return Trainer(model, [vol], tc)


def _head(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith("semantic_head.")}


@pytest.mark.data
def test_real_labelled_case_loads_labels(real_volumes) -> None:
    vol = real_volumes["matrad_hn_frm2"]
    assert vol.has_labels and vol.labels.shape == vol.data.shape[1:] and vol.labels.dtype == torch.int16
    assert set(vol.label_names.values()) >= {"mandible", "spinal_cord", "brain"}
    assert set(torch.unique(vol.labels).tolist()) == {0, *vol.label_names}
    assert int(vol.labels[vol.data[1] < 0.5].abs().sum()) == 0  # nothing outside the field of view
    assert not real_volumes["invesalius_cranium"].has_labels


@pytest.mark.data
def test_one_step_on_a_labelled_case_trains_the_head(real_volumes) -> None:
    trainer = _real_trainer(real_volumes["matrad_hn_frm2"])
    for _ in range(5):  # a view pair may miss every organ; the first with a term is checked
        before = _head(trainer.model)
        parts = trainer.step()
        if parts["semantic_terms"]:
            break
    assert parts["semantic_terms"] > 0
    assert np.isfinite(parts["semantic"]) and parts["semantic"] > 0 and np.isfinite(parts["loss"])
    after = _head(trainer.model)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.data
def test_step_on_an_unlabelled_case_has_no_semantic_term(real_volumes) -> None:
    trainer = _real_trainer(real_volumes["invesalius_cranium"])
    before = _head(trainer.model)
    parts = trainer.step()
    assert parts["semantic"] == 0.0 and parts["semantic_terms"] == 0 and np.isfinite(parts["loss"])
    after = _head(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no gradient reached the head
    assert all(p.grad is None for k, p in trainer.model.named_parameters() if k.startswith("semantic_head."))


def test_fit_logs_the_semantic_term() -> None:
    vol = labelled_volume(label_phantom(seed=2))
    trainer = _semantic_trainer([vol])
    trainer.cfg.steps = 3
    state = trainer.fit()
    assert all("semantic" in h for h in state.history) and len(state.history) == 3
    assert all(np.isfinite(h["semantic"]) for h in state.history)
    assert any(h["semantic_steps"] > 0 and h["semantic"] > 0 for h in state.history)
