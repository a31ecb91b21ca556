"""Small tensor operations shared by the network and the matcher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs CPU float32 inference through oneDNN (``mkldnn_convolution``).

    For batch-1 inputs PyTorch's eager dispatch sends 1x1x1, dilated and small-volume 3D
    convolutions to its reference ``slow_conv3d`` kernels, several times slower than oneDNN on
    the same input (the embedding network's convolutions: 0.47 s against 0.11 s for a 96 x 100
    x 98 volume on one thread). Training (gradients enabled), other devices and dtypes, and
    padding modes other than zeros take the ordinary path; the weights and state-dict keys
    are those of ``nn.Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or not torch.backends.mkldnn.is_available()):
            return super().forward(x)
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), self.weight, self.bias, list(self.padding),
                                                 list(self.stride), list(self.dilation), self.groups)


def upsample_aligned(x: torch.Tensor, factor: int | tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly upsample a strided map so that voxel ``i`` of the input lands on ``factor*i``.

    ``F.interpolate`` (either ``align_corners`` mode) does not keep the "map voxel i is input
    voxel s*i" convention of strided convolutions; this does: output voxel ``j`` takes the
    value at input position ``j / factor`` (edge values are extended beyond the last voxel).

    Args:
        x: Tensor (B, C, z, y, x).
        factor: Integer upsampling factor (e.g. 2 or 4), or one per axis (z, y, x).
        size: Output spatial size (Z, Y, X); each at most ``factor * n`` for input size ``n``.

    Returns:
        Tensor (B, C, *size).
    """
    factors = (factor,) * 3 if isinstance(factor, int) else tuple(int(f) for f in factor)
    if factors == (1, 1, 1) and tuple(x.shape[2:]) == tuple(size):
        return x
    xp = F.pad(x, (0, 1, 0, 1, 0, 1), mode="replicate")
    full = [f * n + 1 for f, n in zip(factors, x.shape[2:])]
    up = F.interpolate(xp, size=full, mode="trilinear", align_corners=True)
    return up[:, :, : size[0], : size[1], : size[2]]
