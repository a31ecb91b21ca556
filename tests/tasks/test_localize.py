"""Organ localization: voting and statuses (unit), the embedding localizer on real CTs, MedLAM."""

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.tasks.localize import (
    STATUS_NO_SUPPORT,
    STATUS_NOT_FOUND,
    STATUS_OK,
    STATUS_OUTSIDE,
    STATUS_PARTIAL,
    SupportEstimate,
    box_iou,
    clip_box,
    vote,
    wall_distance,
    weighted_median,
)

FOV = np.array([-100.0, -100.0, -100.0, 100.0, 100.0, 100.0])


def _estimate(centre, half, score=0.8, found=True, cut=None, name="s"):
    c, h = np.asarray(centre, float), np.asarray(half, float)
    pts = np.array([c - [h[0], 0, 0], c + [h[0], 0, 0], c - [0, h[1], 0], c + [0, h[1], 0],
                    c - [0, 0, h[2]], c + [0, 0, h[2]]])
    cut = np.zeros(6, bool) if cut is None else np.asarray(cut, bool)
    return SupportEstimate(name, pts, np.full(6, score), np.full(6, found), cut)


def test_box_metrics():
    a = np.array([0.0, 0, 0, 10, 10, 10])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, a + 5) == pytest.approx(125 / (2000 - 125))
    assert box_iou(a, a + 20) == 0.0 and box_iou(a, np.full(6, np.nan)) == 0.0
    assert wall_distance(a, a + np.array([1, 2, 3, -1, -2, -3])) == pytest.approx(2.0)
    assert weighted_median(np.array([1.0, 2.0, 30.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert weighted_median(np.array([1.0, 2.0, 30.0]), np.array([0.1, 0.1, 5.0])) == 30.0
    box, clipped, empty = clip_box(np.array([50.0, 0, 0, 150, 10, 10]), FOV)
    assert clipped and not empty and box[3] == 100.0
    assert clip_box(np.array([150.0, 0, 0, 160, 10, 10]), FOV)[2]


def test_vote_median_of_supports_and_statuses():
    ests = [_estimate([0, 0, 0], [10, 20, 30]), _estimate([2, 0, 0], [10, 20, 30]), _estimate([90, 0, 0], [10, 20, 30])]
    b = vote("liver", ests, FOV)
    np.testing.assert_allclose(b.box, [-8, -20, -30, 12, 20, 30])  # the median support wins
    assert b.status == STATUS_OK and b.found and b.n_supports == 3
    assert vote("liver", [_estimate([95, 0, 0], [10, 5, 5])], FOV).status == STATUS_PARTIAL
    out = vote("liver", [_estimate([300, 0, 0], [10, 5, 5])], FOV)
    assert out.status == STATUS_OUTSIDE and not out.found and "outside the target's field of view" in out.message
    nf = vote("liver", [_estimate([0, 0, 0], [10, 5, 5], found=False)], FOV)
    assert nf.status == STATUS_NOT_FOUND and not nf.found
    empty = vote("brain", [], FOV)
    assert empty.status == STATUS_NO_SUPPORT and np.isnan(empty.box).all()


def test_vote_cut_policy():
    cut_top = [False, False, False, False, False, True]
    # an uncut support wins over a cut one on that side
    both = [_estimate([0, 0, 0], [10, 10, 10], cut=cut_top), _estimate([0, 0, 5], [10, 10, 10])]
    assert vote("x", both, FOV).box[5] == pytest.approx(15.0)
    # every support cut at the top: extend to the field of view, or keep
    assert vote("x", both[:1], FOV, cut_policy="extend").box[5] == pytest.approx(100.0)
    kept = vote("x", both[:1], FOV)  # the default keeps the supports' extent, and says so
    assert kept.box[5] == pytest.approx(10.0) and kept.status == STATUS_OK
    assert "cut by its field of view at zmax" in kept.message and "may go on" in kept.message
    assert vote("x", both, FOV).message == ""  # one uncut support: nothing to say
    with pytest.raises(ValueError, match="unknown cut policy"):
        vote("x", both, FOV, cut_policy="grow")


# -- real data ---------------------------------------------------------------------------------

SHIFT = np.array([7.3, -5.1, 9.7])  # resampling shift (not a multiple of any grid spacing)
ORIGIN_SHIFT = np.array([100.0, -50.0, 30.0])  # and a different scanner origin
ORGANS = ["liver", "spleen", "kidney_left"]


@pytest.fixture(scope="module")
def case(shared_data):
    from uae_ray.api.inputs import load_support

    d = shared_data / "cases" / "ts_example_ct"
    return load_support(f"{d}/image.nii.gz:{d}/labels.nii.gz")


@pytest.fixture(scope="module")
def shifted(case):
    """The case's CT moved by a known shift: content by SHIFT (resampled), frame by ORIGIN_SHIFT."""
    image = case.image
    moved = sitk.Resample(image, image, sitk.TranslationTransform(3, tuple(-SHIFT)), sitk.sitkLinear, -1024.0)
    moved.SetOrigin(tuple(np.asarray(image.GetOrigin()) + ORIGIN_SHIFT))
    return moved


@pytest.fixture(scope="module")
def localizer(case):
    """One localizer for the module, so the support is embedded once."""
    from uae_ray.serving import get_embedder
    from uae_ray.tasks.localize import EmbeddingLocalizer

    return EmbeddingLocalizer(get_embedder(None), [case])


def test_embedding_localizer_finds_boxes_under_a_known_shift(case, shifted, localizer):
    from uae_ray.tasks.support import image_box

    boxes = localizer.localize(shifted, ORGANS + ["brain"], "CT")
    fov = image_box(shifted)
    total = SHIFT + ORIGIN_SHIFT
    ious = {}
    for b in boxes[:-1]:
        truth = clip_box(case.organ(b.name).box + np.tile(total, 2), fov)[0]
        ious[b.name] = box_iou(b.box, truth)
        assert b.found and b.status in (STATUS_OK, STATUS_PARTIAL), (b.name, b.status, b.message)
    assert min(ious.values()) >= 0.85, ious  # measured 0.98-0.99 (tiny-v0, CPU)
    assert boxes[-1].status == STATUS_NO_SUPPORT and "no label named 'brain'" in boxes[-1].message


def test_coarse_to_fine_windows_find_the_same_boxes_under_a_known_shift(case, shifted, localizer):
    from uae_ray.tasks.localize import EmbeddingLocalizer, EmbeddingLocalizerConfig
    from uae_ray.tasks.support import image_box

    windowed = EmbeddingLocalizer(localizer.embedder, [case], EmbeddingLocalizerConfig(window_mm=32.0),
                                  support_maps=[localizer._maps(0)])
    total, fov = SHIFT + ORIGIN_SHIFT, image_box(shifted)
    for b in windowed.localize(shifted, ORGANS, "CT"):
        truth = clip_box(case.organ(b.name).box + np.tile(total, 2), fov)[0]
        assert b.found and box_iou(b.box, truth) >= 0.85, (b.name, box_iou(b.box, truth))


def test_organ_outside_the_field_of_view_is_marked(case, localizer):
    pelvis = case.image[:, :, 0:40]  # the lowest 120 mm: no liver, spleen or kidney left
    boxes = localizer.localize(pelvis, ["liver", "spleen"], "CT")
    for b in boxes:
        assert b.status in (STATUS_NOT_FOUND, STATUS_OUTSIDE) and not b.found, (b.name, b.status)
        assert "field of view" in b.message


def test_medlam_network_and_localizer_shapes(case, shifted):
    import torch

    from uae_ray.models.medlam import MedLAMNet, default_medlam_checkpoint, load_medlam
    from uae_ray.tasks.localize import MedLAMLocalizer

    torch.manual_seed(0)
    net = MedLAMNet().eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 64, 64, 64) - 1.0)
    assert out["projection"].shape == (2, 3)
    assert {s: tuple(f.shape[2:]) for s, f in out["features"].items()} == {2: (32,) * 3, 4: (16,) * 3, 8: (8,) * 3}
    p = torch.tensor([[0.0, 0.0, 0.0]])
    q = torch.tensor([[10.0, -10.0, 0.1]])  # the z scale is 1500 mm, x and y 600 mm
    np.testing.assert_allclose(net.offset(p, q).numpy(), [[600 * np.tanh(10), -600 * np.tanh(10), 1500 * np.tanh(0.1)]],
                               rtol=1e-5)
    model = load_medlam() if default_medlam_checkpoint().is_file() else net
    boxes = MedLAMLocalizer(model, [case]).localize(shifted, ["liver", "brain"], "CT")
    assert boxes[0].method == "medlam" and np.isfinite(boxes[0].box).all() and boxes[0].points.shape == (6, 3)
    assert boxes[1].status == STATUS_NO_SUPPORT
