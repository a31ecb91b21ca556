"""Masks assembled into a 3D label map in the target's own geometry (with a fake network whose
masks are exactly the boxes), and the label-map files."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.models.sam2d import SAM_VIT_TINY, preprocess_shape
from uae_ray.tasks.segment import (OrganPrompt, SliceSegmenter, TargetSlices, mask_slice_boxes, orient,
                                   segment_prompts)
from uae_ray.api.outputs import write_segmentation


class BoxNet:
    """A SliceSegmenter whose mask is its box (logit +w inside, -1 outside; w grows with the box
    order, so a later box wins where boxes overlap)."""

    config = SAM_VIT_TINY
    version = "box-net"

    def __init__(self):
        self.encoded = 0

    def encode(self, images):
        self.encoded += len(images)
        return np.zeros((len(images), 8, 16, 16), np.float32)

    def decode(self, embeddings, boxes):
        m = self.config.low_res_size
        scale = m / self.config.image_size
        out = np.full((len(boxes), 1, m, m), -1.0, np.float32)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            out[i, 0, int(y0 * scale + 0.5) : int(y1 * scale + 0.5) + 1, int(x0 * scale + 0.5) : int(x1 * scale + 0.5) + 1] = 1.0 + i
        return out, np.ones(len(boxes), np.float32)


def test_the_in_process_segmenter_meets_the_protocol():
    from uae_ray.tasks.segment import LocalSliceSegmenter

    assert isinstance(LocalSliceSegmenter(), SliceSegmenter) and not isinstance(object(), SliceSegmenter)


@pytest.mark.data
def test_label_map_in_the_targets_geometry(shared_data, tmp_path):
    case = shared_data / "cases" / "ts_example_ct"  # stored RAS: the map must be flipped back
    image = sitk.ReadImage(str(case / "image.nii.gz"))
    labels = sitk.ReadImage(str(case / "labels.nii.gz"))
    target = TargetSlices(image, "CT", SAM_VIT_TINY)
    lab_o = sitk.GetArrayFromImage(orient(labels))
    liver, spleen = lab_o == 5, lab_o == 1
    net = BoxNet()
    prompts = [OrganPrompt("liver", mask_slice_boxes(liver)), OrganPrompt("missing", {}, "no_support", "none"),
               OrganPrompt("spleen", mask_slice_boxes(spleen))]
    result = segment_prompts(net, target, prompts)
    out = result.labels
    assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()
    assert out.GetSpacing() == image.GetSpacing() and out.GetDirection() == image.GetDirection()
    got = sitk.GetArrayFromImage(out)
    truth = sitk.GetArrayFromImage(labels)
    assert set(np.unique(got)) == {0, 1, 3}  # label k = k-th organ; the empty one stays empty
    # each slice's box covers its organ (up to the 64x64 low-resolution grid at the box edges), so
    # nearly every organ voxel is labelled, in place: a flipped or shifted map would miss them
    assert np.mean(got[truth == 5] > 0) > 0.9 and np.mean(got[truth == 1] == 3) > 0.9
    for label, k in ((5, 1), (1, 3)):  # the labelled region spans the organ's own bounding box
        zyx_truth, zyx_got = np.argwhere(truth == label), np.argwhere(got == k)
        assert np.abs(zyx_truth.min(axis=0) - zyx_got.min(axis=0)).max() <= 2, label
        assert np.abs(zyx_truth.max(axis=0) - zyx_got.max(axis=0)).max() <= 2, label
    assert net.encoded == len(set(mask_slice_boxes(liver)) | set(mask_slice_boxes(spleen)))  # once per slice
    assert [o.status for o in result.organs] == ["ok", "no_support", "ok"]
    assert [o.label for o in result.organs] == [1, 2, 3]
    path, sidecar = write_segmentation(result, str(tmp_path / "seg" / "labels.nii.gz"))
    assert sidecar == str(tmp_path / "seg" / "labels.json")
    assert json.loads(open(sidecar).read()) == {"1": "liver", "2": "missing", "3": "spleen"}
    back = sitk.ReadImage(path)
    assert np.array_equal(sitk.GetArrayFromImage(back), got)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), image.GetDirection()) and back.GetPixelID() == sitk.sitkUInt8


def test_windowing_of_ct_and_mr():
    from uae_ray.tasks.segment import window_range, window_slices

    ct = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    lo, hi = window_range(ct, "CT", SAM_VIT_TINY)
    assert (lo, hi) == (-160.0, 240.0)
    assert np.allclose(window_slices(ct, lo, hi), [[0, 0, 127.5, 255, 255]])
    mr = np.arange(1000, dtype=np.float32)
    lo, hi = window_range(mr, "MR", SAM_VIT_TINY)
    assert lo == pytest.approx(4.995) and hi == pytest.approx(994.005)
    assert preprocess_shape(512, 398, SAM_VIT_TINY) == (256, 199)
