"""Training data of the small segment-anything model: pseudo-objects, geometry of the augmentation,
batches, and the prepared-set file (synthetic slices; no shared data needed)."""

import numpy as np
import torch

from uae_ray.models.sam2d import SAM_VIT_TINY
from uae_ray.train.sam2d import SamTrainConfig, evaluate_slices, train_sam2d
from uae_ray.train.sam_data import SliceSet, _map_boxes, _warp, _warp_matrix, pseudo_objects, sample_batch, tight_boxes

L = SAM_VIT_TINY.image_size


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:L, :L]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _slice_set(n: int = 6) -> SliceSet:
    """Two organs (a bright disc, a darker square) on ``n`` slices of one case, 200 x 240 content."""
    images = np.zeros((n, L, L), dtype=np.uint8)
    labels = np.zeros((n, L, L), dtype=np.int16)
    images[:, :200, :240] = 60
    for i in range(n):
        d = _disc(80, 90, 25 + 2 * i)
        images[i][d] = 200
        labels[i][d] = 1
        images[i, 120:170, 150:210] = 120
        labels[i, 120:170, 150:210] = 2
    pseudo = np.stack([pseudo_objects(im, (200, 240)) for im in images])
    boxes = {(0, 1): np.array([90 - 35, 80 - 35, 90 + 35, 80 + 35, 0, n - 1], np.float32),
             (0, 2): np.array([150, 120, 209, 169, 0, n - 1], np.float32)}
    return SliceSet(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(pseudo),
                    np.tile([200, 240], (n, 1)), np.zeros(n, int), np.arange(n), boxes, {1: "liver", 2: "spleen"},
                    ["case"])


def test_pseudo_objects_are_the_regions_of_the_slice():
    s = _slice_set(1)
    obj = s.pseudo[0].numpy()
    disc = _disc(80, 90, 25)
    ids, counts = np.unique(obj[disc], return_counts=True)
    main = ids[counts.argmax()]
    assert main > 0 and counts.max() >= 0.85 * disc.sum()  # the disc is one object (its blurred rim aside) ...
    assert (obj[~disc] == main).sum() <= 0.05 * disc.sum()  # ... that stays inside the disc
    square = obj[125:165, 155:205]
    assert len(np.unique(square)) == 1 and square[0, 0] > 0 and square[0, 0] != main
    assert (obj[:200, :240] == 0).mean() > 0.5  # the large background is no object
    assert not obj[200:].any() and not obj[:, 240:].any()  # nothing in the padding


def test_warp_and_box_map_agree():
    """A box mapped with the forward pixel map bounds the warped mask (flip, zoom, rotation, shift)."""
    cfg = SamTrainConfig(rotate_deg=20, zoom_prob=1.0, zoom_min=0.7, zoom_max=1.3, flip_prob=0.5)
    rng = np.random.default_rng(1)
    mask = np.zeros((L, L), np.float32)
    mask[60:110, 40:150] = 1
    box = np.array([[40, 60, 149, 109]], np.float64)
    for _ in range(20):
        m = _warp_matrix(rng, np.array([200, 240]), cfg)[None]
        warped = _warp(torch.from_numpy(mask)[None, None], m, L, "nearest")[0, 0] > 0
        if warped.sum() < 50 or warped[0].any() or warped[-1].any() or warped[:, 0].any() or warped[:, -1].any():
            continue  # cut by the frame: the bound is not tight
        got = tight_boxes(warped[None])[0].numpy()
        want = _map_boxes(box, m)[0]
        np.testing.assert_allclose(got, want, atol=2.0)


def test_batches_and_the_prepared_file(tmp_path):
    data = _slice_set()
    path = tmp_path / "slices.npz"
    data.save(path)
    back = SliceSet.load(path)
    assert torch.equal(back.images, data.images) and torch.equal(back.pseudo, data.pseudo)
    assert back.organ_names == data.organ_names and back.cases == data.cases
    np.testing.assert_array_equal(back.organ_boxes[(0, 2)], data.organ_boxes[(0, 2)])
    cfg = SamTrainConfig(slices_per_step=4, prompts_per_slice=2, p_pseudo=0.5, rotate_deg=15, gamma=0.3, noise_std=5)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(10):
        x, boxes, index, targets = sample_batch(back, cfg, SAM_VIT_TINY, rng)
        assert x.shape == (4, 3, L, L) and boxes.shape[1] == 4 and len(index) == len(boxes) == len(targets)
        assert float(boxes.min()) >= 0 and float(boxes.max()) <= L - 1
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        for t, b in zip(targets, boxes):
            if t.any():  # a non-empty target lies mostly inside its (jittered) box
                ys, xs = torch.nonzero(t, as_tuple=True)
                inside = (xs >= b[0] - 1) & (xs <= b[2] + 1) & (ys >= b[1] - 1) & (ys <= b[3] + 1)
                assert inside.float().mean() > 0.8
                kinds.add(int(t.sum()))
    assert len(kinds) > 2  # organs and pseudo-objects of several sizes


def test_training_lowers_the_loss_and_the_proxy_evaluates():
    data = _slice_set()
    cfg = SamTrainConfig(steps=40, seconds=120, slices_per_step=4, prompts_per_slice=2, warmup_steps=5, lr=1e-3)
    model, history = train_sam2d(data, cfg, log_every=20)
    assert len(history) == 40
    assert np.mean([h["loss"] for h in history[-10:]]) < np.mean([h["loss"] for h in history[:5]])
    out = evaluate_slices(model, data)
    assert out["gt-slice"]["n"] == 2 and 0.0 <= out["gt-slice"]["mean_dice"] <= 1.0
    assert set(out["gt-wpl"]["per_organ"]) == {"case/liver", "case/spleen"}


def test_negatives_of_an_organ_id_above_the_batch():
    """A negative prompt may name an organ id higher than any label in the drawn slices."""
    data = _slice_set()
    data.labels[3:][data.labels[3:] == 2] = 0  # organ 2 only on slices 0-2
    data.organ_boxes[(0, 2)][4:] = (0, 2)
    cfg = SamTrainConfig(slices_per_step=2, prompts_per_slice=2, p_negative=0.5, p_pseudo=0.0)
    rng = np.random.default_rng(0)
    empty = 0
    for _ in range(30):
        batch = sample_batch(data, cfg, SAM_VIT_TINY, rng)
        if batch is not None:
            empty += int((batch[3].sum((1, 2)) == 0).sum())
    assert empty > 0  # negatives (empty targets) were drawn


def test_a_resumed_run_continues_the_same_run(tmp_path):
    """Stopped at step 4 and resumed to step 8, the run draws the same batches and gives the same
    losses as one run of 8 steps (the schedule follows wall-clock time, so only nearly equal)."""
    data = _slice_set()
    cfg = SamTrainConfig(steps=8, seconds=3600, slices_per_step=2, prompts_per_slice=2, warmup_steps=2)
    _, straight = train_sam2d(data, cfg)
    state = tmp_path / "run.resume.pt"
    train_sam2d(data, SamTrainConfig(**{**cfg.__dict__, "steps": 4}), resume_path=state)
    assert state.is_file()
    _, resumed = train_sam2d(data, cfg, resume_path=state)
    assert [h["step"] for h in resumed] == list(range(1, 9))
    assert [h["prompts"] for h in resumed] == [h["prompts"] for h in straight]
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in straight], rtol=1e-3)
