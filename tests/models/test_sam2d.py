"""segment-anything model code without torchvision; the small model, its checkpoints and the
official-checkpoint path."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from uae_ray.models.sam2d import (SAM_VIT_TINY, Sam2D, Sam2DConfig, decode_masks, load_sam2d, logits_to_slice,
                                  official_kind, prepare_slices, preprocess_shape, save_sam2d, scale_boxes)


def test_modeling_imports_without_torchvision():
    code = ("import sys\n"
            "from uae_ray.models.sam_import import sam_modeling, sam_build\n"
            "m = sam_modeling(); b = sam_build()\n"
            "assert hasattr(m, 'Sam') and hasattr(m, 'ImageEncoderViT') and hasattr(m, 'MaskDecoder')\n"
            "assert set(b.sam_model_registry) >= {'vit_b', 'vit_l', 'vit_h'}\n"
            "assert 'torchvision' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_batched_decoder_equals_segment_anythings_own():
    torch.manual_seed(0)
    model = Sam2D(SAM_VIT_TINY).eval()
    with torch.no_grad():
        emb = model.sam.image_encoder(torch.randn(1, 3, 256, 256))
        boxes = torch.tensor([[10.0, 20, 100, 120], [50, 60, 200, 210], [0, 0, 255, 255]])
        sparse, dense = model.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        want, want_iou = model.sam.mask_decoder(emb, model.sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                                multimask_output=False)
        got, iou = decode_masks(model.sam, emb.expand(3, -1, -1, -1), boxes)
    assert got.shape == (3, 1, 64, 64) and SAM_VIT_TINY.low_res_size == 64
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(iou, want_iou, atol=1e-6)


def test_preprocessing_resizes_the_longest_side_and_pads():
    cfg = SAM_VIT_TINY
    slices = np.full((2, 100, 50), 255.0, dtype=np.float32)
    x = prepare_slices(slices, cfg)
    assert x.shape == (2, 3, 256, 256) and preprocess_shape(100, 50, cfg) == (256, 128)
    mean, std = np.array(cfg.pixel_mean), np.array(cfg.pixel_std)
    assert np.allclose(x[0, :, 10, 10].numpy(), (255 - mean) / std, atol=1e-4)
    assert float(x[0, :, :, 128:].abs().max()) == 0.0  # padding (right) is zero after normalising
    assert np.allclose(scale_boxes([[0, 0, 49, 99]], (100, 50), cfg), [[0, 0, 49 * 2.56, 99 * 2.56]])
    logits = torch.zeros((1, 1, 64, 64))
    logits[..., :, 32:] = -1.0  # the padded half is cut away before resizing back
    assert logits_to_slice(logits, (100, 50), cfg).shape == (1, 100, 50)
    assert float(logits_to_slice(logits, (100, 50), cfg)[0, 50, 25]) == 0.0
    med = Sam2DConfig(name="medsam", image_size=64, patch_size=16, preprocess="medsam")
    y = prepare_slices(np.linspace(0, 100, 100 * 50).reshape(1, 100, 50), med)
    assert y.shape == (1, 3, 64, 64) and float(y.min()) == 0.0 and float(y.max()) == pytest.approx(1.0)


def test_checkpoint_round_trip_and_version(tmp_path):
    torch.manual_seed(1)
    model = Sam2D(SAM_VIT_TINY)
    version = save_sam2d(model, tmp_path / "m.pt", {"release": "sam-vit-tiny-test"})
    loaded = load_sam2d(tmp_path / "m.pt")
    assert loaded.version == version and version.startswith("sam-vit-tiny-test+")
    assert loaded.config == SAM_VIT_TINY and not loaded.training
    a = model.sam.state_dict()["mask_decoder.iou_token.weight"].half().float()
    assert torch.equal(loaded.sam.state_dict()["mask_decoder.iou_token.weight"], a)


def test_official_checkpoints_are_recognised(tmp_path):
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    assert official_kind(state, tmp_path / "sam_vit_b_01ec64.pth") == "vit_b"
    assert official_kind(state, tmp_path / "medsam_vit_b.pth") == "medsam"
    assert official_kind({"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16)},
                         tmp_path / "x.pth") == "vit_h"
    with pytest.raises(ValueError, match="a vit_b checkpoint, not vit_h"):
        official_kind(state, tmp_path / "x.pth", "vit_h")
    # a raw segment-anything state dict of another width: one clear line naming the file
    torch.save(Sam2D(SAM_VIT_TINY).sam.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"odd\.pth: image encoder width 160"):
        load_sam2d(tmp_path / "odd.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_sam2d(tmp_path / "missing.pth")


def test_registry_has_the_small_model():
    from uae_ray.models.registry import MODEL_REGISTRY

    model = MODEL_REGISTRY["sam-vit-tiny"]()
    assert isinstance(model, Sam2D) and model.config.name == "sam-vit-tiny"


@pytest.mark.slow
def test_an_official_vit_b_file_loads_by_path_and_segments(tmp_path):
    """A file in the official layout (a raw state dict of segment-anything's own ViT-B, as
    ``sam_vit_b_01ec64.pth``; random weights, none can be downloaded here) loads through the
    ``--sam-checkpoint`` path and runs the whole slice pipeline at 1024 x 1024."""
    import SimpleITK as sitk

    from uae_ray.models.sam_import import sam_build
    from uae_ray.tasks.segment import LocalSliceSegmenter, OrganPrompt, TargetSlices, segment_prompts

    torch.manual_seed(0)
    official = sam_build().sam_model_registry["vit_b"](checkpoint=None)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(official.state_dict(), path)
    model = load_sam2d(path)
    assert model.version.startswith("vit_b:sam_vit_b_01ec64.pth+") and model.config.image_size == 1024
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.sam.state_dict()[key], official.state_dict()[key])
    del official

    image = sitk.GetImageFromArray(np.full((2, 48, 64), -1000, np.int16))  # z, y, x
    image.SetSpacing((1.5, 1.5, 3.0))
    seg = LocalSliceSegmenter(model, device="cpu")
    target = TargetSlices(image, "CT", seg.config)
    result = segment_prompts(seg, target, [OrganPrompt("box", {1: np.array([10, 8, 40, 30])})])
    assert result.labels.GetSize() == image.GetSize() and result.n_slices_encoded == 1
    assert result.organs[0].name == "box" and result.organs[0].n_slices <= 1
