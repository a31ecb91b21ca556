"""EmbeddingNet output shapes, strides, normalisation and the aligned upsampling."""

from __future__ import annotations

import pytest
import torch

from uae_ray.models import EmbeddingConfig, EmbeddingNet, build_model
from uae_ray.models.ops import upsample_aligned


@pytest.fixture(scope="module")
def model() -> EmbeddingNet:
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.mark.parametrize("shape", [(32, 48, 64), (20, 30, 41)])
def test_output_shapes_and_norm(model: EmbeddingNet, shape: tuple[int, int, int]) -> None:
    x = torch.rand(2, 1, *shape) * 2 - 1
    with torch.no_grad():
        out = model(x)
    cfg = model.config
    ceil = lambda n, s: -(-n // s)  # noqa: E731
    assert out["local"].shape == (2, cfg.local_dim, *[ceil(n, 2) for n in shape])
    assert out["global"].shape == (2, cfg.global_dim, *[ceil(ceil(ceil(n, 2), 2), 2) for n in shape])
    for key in ("local", "global"):
        norms = out[key].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def test_multiple_of_16_gives_exact_strides(model: EmbeddingNet) -> None:
    with torch.no_grad():
        out = model(torch.full((1, 1, 32, 32, 48), -1.0))
    assert out["local"].shape[2:] == (16, 16, 24)
    assert out["global"].shape[2:] == (4, 4, 6)


def test_rejects_wrong_input_rank(model: EmbeddingNet) -> None:
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(1, 16, 16, 16))


def test_zero_padding_equals_air(model: EmbeddingNet) -> None:
    # Air (-1) maps to 0 in every input channel, so padding a volume with air changes nothing
    # in the interior of the local map far enough from the new border.
    torch.manual_seed(1)
    x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    x[..., :8, :, :] = -1.0
    pre = model.preprocess(torch.full((1, 1, 2, 2, 2), -1.0))
    assert torch.all(pre == 0)


def test_upsample_aligned_keeps_stride_convention() -> None:
    n = 5
    ramp = torch.arange(n, dtype=torch.float32).reshape(1, 1, n, 1, 1).expand(1, 1, n, 3, 3).contiguous()
    for factor in (2, 4):
        up = upsample_aligned(ramp, factor, (factor * n, 3, 3))
        j = torch.arange(factor * n, dtype=torch.float32)
        expected = torch.clamp(j / factor, max=n - 1)
        assert torch.allclose(up[0, 0, :, 1, 1], expected, atol=1e-5)


def test_unsupported_strides() -> None:
    with pytest.raises(ValueError, match="stride"):
        EmbeddingNet(EmbeddingConfig(local_stride=4))


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "padding": 2, "dilation": 2},
    {"kernel_size": 3, "padding": 1, "stride": 2, "bias": False},
    {"kernel_size": 1},
])
def test_onednn_conv3d_equals_the_reference_convolution(kwargs: dict) -> None:
    from uae_ray.models.ops import Conv3d

    torch.manual_seed(0)
    fast = Conv3d(8, 16, **kwargs)
    ref = torch.nn.Conv3d(8, 16, **kwargs)
    ref.load_state_dict(fast.state_dict())  # same keys: checkpoints load either way
    x = torch.randn(1, 8, 11, 14, 13)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    y = fast(x)  # gradients enabled: the ordinary path, and it trains
    y.sum().backward()
    assert fast.weight.grad is not None and torch.isfinite(fast.weight.grad).all()
