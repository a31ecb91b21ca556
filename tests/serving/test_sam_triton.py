"""The segment-anything models of model_repo served by the real Triton of the session stack
agree with the in-process model."""

from collections.abc import Iterator

import numpy as np
import pytest
import SimpleITK as sitk

from uae_ray.tasks.segment import LocalSliceSegmenter, OrganPrompt, TargetSlices, mask_slice_boxes, orient, segment_prompts


@pytest.fixture(scope="module")
def remote(stack) -> Iterator:
    from uae_ray.serving.sam_triton import TritonSliceSegmenter

    seg = TritonSliceSegmenter(stack.env["UAE_TRITON_URL"], retries=1, backoff_s=0.1)
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def local() -> LocalSliceSegmenter:
    return LocalSliceSegmenter()  # the shipped default, as the server loads it


@pytest.mark.stack
def test_version_and_config_match(remote, local):
    assert remote.version == local.version
    assert remote.config == local.config


@pytest.mark.stack
def test_encoder_and_decoder_agree(remote, local):
    L = local.config.image_size
    images = np.random.default_rng(0).normal(size=(3, 3, L, L)).astype(np.float32)
    er, el = remote.encode(images), local.encode(images)
    assert er.shape == el.shape and float(np.abs(er - el).max()) < 1e-4
    boxes = np.array([[10, 10, 100, 120], [40, 60, 200, 230], [0, 0, L - 1, L - 1]], np.float32)
    (lr, ir), (ll, il) = remote.decode(er[[0, 2, 2]], boxes), local.decode(el[[0, 2, 2]], boxes)
    assert lr.shape == (3, 1, local.config.low_res_size, local.config.low_res_size)
    assert float(np.abs(lr - ll).max()) < 1e-3 and float(np.abs(ir - il).max()) < 1e-4


@pytest.mark.stack
@pytest.mark.data
def test_same_label_map_on_a_real_ct(remote, local, shared_data):
    case = shared_data / "cases" / "ts_upper_abdomen"
    image = sitk.ReadImage(str(case / "image.nii.gz"))
    lab = sitk.GetArrayFromImage(orient(sitk.ReadImage(str(case / "labels.nii.gz"))))
    prompts = [OrganPrompt("liver", mask_slice_boxes(lab == 5)), OrganPrompt("spleen", mask_slice_boxes(lab == 1))]
    a = sitk.GetArrayFromImage(segment_prompts(remote, TargetSlices(image, "CT", remote.config), prompts).labels)
    b = sitk.GetArrayFromImage(segment_prompts(local, TargetSlices(image, "CT", local.config), prompts).labels)
    assert (a > 0).sum() > 1000
    assert np.mean(a != b) < 1e-4  # logits agree to ~1e-6; a voxel exactly at 0 may flip


@pytest.mark.stack
def test_bad_request_is_a_clear_error(remote):
    from uae_ray.serving.triton import TritonEmbedderError

    L = remote.config.image_size
    with pytest.raises(ValueError, match="images must be"):
        remote.encode(np.zeros((1, 3, L + 16, L + 16), np.float32))
    with pytest.raises(TritonEmbedderError, match="EMBEDDING must be"):
        remote.decode(np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 4), np.float32))
    assert remote.encode(np.zeros((1, 3, L, L), np.float32)).shape[0] == 1  # the server goes on
