"""WPL / SPL slice boxes from known 3D boxes and labels; world boxes on reoriented targets."""

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.tasks.segment import (mask_index_box, mask_slice_boxes, n_parts, orient, spl_slice_boxes, split_parts,
                                   world_box_to_index, wpl_slice_boxes)


def test_wpl_one_box_on_every_slice():
    boxes = wpl_slice_boxes(np.array([3, 4, 10, 20, 30, 13]))
    assert sorted(boxes) == [10, 11, 12, 13]
    assert all(np.array_equal(b, [3, 4, 20, 30]) for b in boxes.values())
    assert wpl_slice_boxes(None) == {}


def test_spl_union_where_parts_overlap_and_nearest_in_gaps():
    parts = [np.array([0, 0, 0, 10, 10, 2]), np.array([5, 5, 2, 20, 20, 4]), np.array([8, 8, 7, 9, 9, 8])]
    boxes = spl_slice_boxes(parts)
    assert sorted(boxes) == list(range(0, 9))
    assert np.array_equal(boxes[0], [0, 0, 10, 10])
    assert np.array_equal(boxes[2], [0, 0, 20, 20])  # both parts cover slice 2: their union
    assert np.array_equal(boxes[5], [5, 5, 20, 20])  # gap: the nearer part (ends at 4)
    assert np.array_equal(boxes[6], [8, 8, 9, 9])  # gap: the nearer part (starts at 7)
    assert spl_slice_boxes([None]) == {}


def test_parts_of_a_known_label():
    mask = np.zeros((30, 20, 20), bool)
    mask[5:25, 4:10, 6:12] = True  # a 20-slice box ...
    mask[20:25, 4:16, 6:18] = True  # ... wider at the top
    assert np.array_equal(mask_index_box(mask), [6, 4, 5, 17, 15, 24])
    per_slice = mask_slice_boxes(mask)
    assert sorted(per_slice) == list(range(5, 25))
    assert np.array_equal(per_slice[5], [6, 4, 11, 9]) and np.array_equal(per_slice[24], [6, 4, 17, 15])
    zyx = np.argwhere(mask)
    world = zyx[:, ::-1].astype(float) * [1.0, 1.0, 2.5]  # 2.5 mm slices: 47.5 mm extent
    n = n_parts(float(world[:, 2].max() - world[:, 2].min()))
    assert n == 1 and n_parts(160.0) == 6 and n_parts(1000.0) == 6 and n_parts(60.0) == 2
    sel = split_parts(world, 4)
    assert sum(int(s.sum()) for s in sel) == len(world) and all(s.any() for s in sel)
    parts = [np.concatenate([zyx[s].min(axis=0)[::-1], zyx[s].max(axis=0)[::-1]]) for s in sel]
    boxes = spl_slice_boxes(parts)
    assert np.array_equal(boxes[6], [6, 4, 11, 9])  # the narrow bottom part
    assert np.array_equal(boxes[24], [6, 4, 17, 15])  # the wide top part
    assert sorted(boxes) == list(range(5, 25))


@pytest.mark.data
def test_world_box_on_a_ras_stored_ct(shared_data):
    """ts_example_ct is stored RAS (direction diag(-1, -1, 1)): its boxes.csv boxes map onto the
    LPS-oriented grid exactly at the organ's voxels."""
    import csv

    case = shared_data / "cases" / "ts_example_ct"
    labels = sitk.ReadImage(str(case / "labels.nii.gz"))
    oriented = orient(labels)
    assert oriented.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    arr = sitk.GetArrayFromImage(oriented)
    boxes = {r["name"]: np.array([float(r[c]) for c in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")])
             for r in csv.DictReader(open(case / "boxes.csv"))}
    for name, label in (("liver", 5), ("spleen", 1)):
        got = world_box_to_index(boxes[name], oriented)
        assert np.array_equal(got, mask_index_box(arr == label)), name
    assert world_box_to_index(np.array([1e4, 1e4, 1e4, 1e4 + 1, 1e4 + 1, 1e4 + 1]), oriented) is None
    assert world_box_to_index(np.full(6, np.nan), oriented) is None


def test_spl_supports_split_the_organ_into_named_z_parts():
    from uae_ray.tasks.segment import part_name, spl_supports
    from uae_ray.tasks.support import Support, SupportSpec

    arr = np.zeros((40, 20, 20), np.uint8)
    arr[5:35, 4:12, 6:14] = 1  # 30 slices x 2.5 mm: 72.5 mm between the first and last centre
    arr[10:12, 2:4, 2:4] = 2
    labels = sitk.GetImageFromArray(arr)
    labels.SetSpacing((1.0, 1.0, 2.5))
    image = sitk.Cast(labels, sitk.sitkInt16)
    support = Support(SupportSpec("img", "lab"), image, labels, {1: "liver", 2: "other"}, "test", "CT")
    (derived,), counts = spl_supports([support], ["liver", "absent"])
    assert counts == {"liver": 2, "absent": 1}
    assert sorted(derived.names.values()) == [part_name("liver", 0, 2), part_name("liver", 1, 2)]
    parts = sitk.GetArrayFromImage(derived.labels)
    assert np.array_equal(parts > 0, arr == 1)  # the parts tile the organ, nothing else
    lows = [np.argwhere(parts == k)[:, 0] for k in sorted(derived.names)]
    assert lows[0].max() < lows[1].min()  # inferior part first
    assert derived.image is image and derived.organ(part_name("liver", 1, 2)) is not None


def test_spl_embeds_the_target_once_for_both_localizations():
    """SPL localizes the organs, then their parts: one embedding of the target and one of the
    support serve both (the factory reuses the support's maps for its SPL twin)."""
    from uae_ray.api.models import make_localizer_factory
    from uae_ray.models.sam2d import Sam2DConfig
    from uae_ray.serving import get_embedder
    from uae_ray.tasks.segment import localize_prompts
    from uae_ray.tasks.segment.assembly import TargetSlices
    from uae_ray.tasks.support import Support, SupportSpec

    rng = np.random.default_rng(0)
    arr = rng.integers(-100, 200, size=(48, 40, 40)).astype(np.int16)
    labels_arr = np.zeros(arr.shape, np.uint8)
    labels_arr[8:40, 10:30, 12:28] = 1
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((2.0, 2.0, 2.5))
    labels = sitk.GetImageFromArray(labels_arr)
    labels.CopyInformation(image)
    support = Support(SupportSpec("img", "lab"), image, labels, {1: "liver"}, "test", "CT")
    calls = []
    inner = get_embedder(None)
    original = inner.embed
    inner.embed = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        factory = make_localizer_factory("embedding", None, None, None, None)
        prompts = localize_prompts(factory, [support], image, TargetSlices(image, "CT", Sam2DConfig()), ["liver"],
                                   mode="spl")
    finally:
        inner.embed = original
    assert len(calls) == 2, f"{len(calls)} embeddings: the target and the support once each"
    assert [p.name for p in prompts] == ["liver"]
