"""The published SAM / UAE embedding network ("sam-r18"), with the official parameter names.

A plain-torch re-implementation of the model of Yan et al. 2022 (SAM) and Bai et al. 2023 (UAE)
as released in ``alibaba-damo-academy/self-supervised-anatomical-embedding-v2`` (mmcv 1.4.7 /
mmdet 2.20), so that the official checkpoints ``SAM.pth``, ``SAMv2_iter_20000.pth`` and
``CrossSAM_iter_20000_ct_mr_inter_1.pth`` load with ``load_state_dict(strict=True)``.

Published definition (files read in that repository):

* ``configs/sam/sam_deeplesion.py`` / ``sam_NIHLN.py`` (SAM), ``configs/samv2/samv2_NIHLN.py``
  (UAE-S) and ``configs/samv2/samv2_ct_mri_inter.py`` (UAE-M): ``ResNet3d(depth=18,
  in_channels=1, conv1_kernel=(3, 7, 7), conv1_stride_s=1, conv1_stride_t=1, with_pool1=False,
  with_pool2=True, spatial_strides=(2, 2, 2, 2), temporal_strides=(1, 1, 1, 2),
  inflate=((0, 0), (0, 0), (1, 1), (1, 1)))``; ``neck=FPN3d(in_channels=[64, 128, 256],
  out_channels=128, end_level=3)``; ``read_out_head=FPN3d(in_channels=[512], out_channels=128)``.
* ``sam/models/backbones/resnet3d.py``: the stem is ``conv1`` (ConvModule conv+BN+ReLU); every
  stage's first block has a 1x1x1 ``downsample`` ConvModule (stage 1 too, as it is strided);
  blocks of stages 1-2 use (1, 3, 3) kernels, stages 3-4 (3, 3, 3); ``pool2`` (max pool (2, 1, 1))
  follows stage 1. The "temporal" axis of that code is z: inputs are (B, 1, Z, Y, X).
* ``sam/models/necks/fpn3d.py`` (read from the ``sunyu0410`` fork, commit 72127ad; the stored
  copy of upstream lacks it): FPN without norm or activation (conv biases on), nearest
  upsampling top-down, and a single 3x3x3 output conv on the finest level.
* Cross-check: the module printout of the built official ``Sam`` model in
  ``sunyu0410/.../notebooks/1-torch-rewrite.ipynb`` lists the same convolutions (channels,
  kernels, strides, paddings, biases) as this module.
* ``sam/models/frameworks/sam.py`` (``Sam.extract_feat``): local = ``neck(x[:3])[0]``, global =
  ``read_out_head([x[-1]])[0]``, both L2-normalised; UAE
  (``sam_v2_uniform_cross_volume_mask_dual_head_*.py``) adds ``semantic_head = build_neck(neck)``.
* ``sam/datasets/piplines/process3d.py`` (``RescaleIntensity``): CT HU clipped to
  [-1024, 3071], mapped to [0, 255], minus 50 (MR: 0.2/99.8 percentiles, same mapping).

Geometry (input 2 mm): stage strides (z, y, x) are (2, 2, 2), (2, 4, 4), (2, 8, 8) and
(4, 16, 16), so the local (and semantic) maps are at 4 mm and the global map at 8 x 32 x 32 mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.ops import Conv3d

#: Registry name and ``EmbeddingConfig.arch`` of this network.
ARCH = "sam-r18"
#: Output channels of every embedding head.
EMBED_DIM = 128
#: Stage widths of the ResNet-18 backbone.
STAGE_WIDTHS = (64, 128, 256, 512)
#: Per-stage (z, y, x) strides of each stage's first block (spatial_strides / temporal_strides).
STAGE_STRIDES = ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
#: Whether a stage's blocks use full 3x3x3 kernels (else 1x3x3), from ``inflate``.
STAGE_INFLATE = (False, False, True, True)
#: Total (z, y, x) stride of the local and global maps.
LOCAL_STRIDE_ZYX = (2, 2, 2)
GLOBAL_STRIDE_ZYX = (4, 16, 16)
#: The published input scaling of a normalised volume ``x`` in [-1, 1] (``uae_ray.volume``:
#: HU [-1024, 3071] -> [-1, 1]) to the official one, ``(x + 1) / 2 * 255 - 50``.
INPUT_SCALE = 127.5
INPUT_SHIFT = 77.5
#: Normalised intensity of air / background, used to pad the input.
AIR = -1.0


def sam_r18_config(semantic: bool = False) -> EmbeddingConfig:
    """Config of the published network.

    Args:
        semantic: Include the UAE semantic head (``SAMv2`` / ``CrossSAM`` checkpoints).
    """
    return EmbeddingConfig(
        name=ARCH,
        arch=ARCH,
        input_spacing_mm=2.0,
        local_stride=LOCAL_STRIDE_ZYX[0],
        global_stride=GLOBAL_STRIDE_ZYX,
        pad_multiple=16,
        widths=STAGE_WIDTHS,
        blocks=(2, 2, 2, 2),
        dilations=(),
        fpn_dim=EMBED_DIM,
        local_dim=EMBED_DIM,
        global_dim=EMBED_DIM,
        semantic_dim=EMBED_DIM if semantic else 0,
        windows=(),
    )


class ConvModule(nn.Module):
    """mmcv-style ``ConvModule``: ``conv`` [+ ``bn``] [+ ReLU], named as in mmcv checkpoints.

    With batch norm the convolution has no bias (mmcv ``bias="auto"``); without it, it has one.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=not norm)
        self.bn = nn.BatchNorm3d(cout) if norm else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.act else x


class BasicBlock3d(nn.Module):
    """ResNet-3D basic block (mmaction ``BasicBlock3d``, style "pytorch", dilation 1)."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int], inflate: bool) -> None:
        super().__init__()
        kernel, pad = ((3, 3, 3), (1, 1, 1)) if inflate else ((1, 3, 3), (0, 1, 1))
        self.conv1 = ConvModule(cin, cout, kernel, stride, pad, act=True)
        self.conv2 = ConvModule(cout, cout, kernel, 1, pad, act=False)
        strided = any(s != 1 for s in stride)
        self.downsample = ConvModule(cin, cout, 1, stride, act=False) if strided or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(self.conv1(x)) + identity, inplace=True)


class ResNet3dR18(nn.Module):
    """The SAM backbone: 3x7x7 stem at full resolution, four 2-block stages, z-pool after stage 1.

    ``forward`` returns the four stage outputs, at (z, y, x) strides (2, 2, 2), (2, 4, 4),
    (2, 8, 8) and (4, 16, 16).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvModule(1, STAGE_WIDTHS[0], (3, 7, 7), 1, (1, 3, 3), act=True)
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        cin = STAGE_WIDTHS[0]
        for i, (width, stride, inflate) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, STAGE_INFLATE)):
            blocks = [BasicBlock3d(cin, width, stride, inflate), BasicBlock3d(width, width, (1, 1, 1), inflate)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        x = self.conv1(x)
        outs = []
        for i in range(len(STAGE_WIDTHS)):
            x = getattr(self, f"layer{i + 1}")(x)
            if i == 0:
                x = self.pool2(x)
            outs.append(x)
        return outs


class FPN3d(nn.Module):
    """The SAM ``FPN3d`` neck: 1x1x1 laterals, nearest top-down sum, one 3x3x3 output conv."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = EMBED_DIM) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, padding=1, norm=False, act=False)])

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``feats`` (finest first) and return the finest output level."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return self.fpn_convs[0](laterals[0])


class SamR18(nn.Module):
    """Published SAM (local + global) / UAE (+ semantic) embedding network.

    ``state_dict()`` keys and shapes equal those of the official mmcv checkpoints (see
    ``uae_ray/models/manifests/sam_r18.json``). The input is a normalised volume on the model
    grid (``uae_ray.volume.prepare_volume``: 2 mm, identity direction i.e. LPS, air = -1); it is
    mapped to the published intensity scale inside :meth:`forward`.

    Attributes:
        config: The :class:`EmbeddingConfig` (:func:`sam_r18_config`).
        version: Model version string stored with every result.
    """

    def __init__(self, config: EmbeddingConfig | None = None, version: str | None = None) -> None:
        super().__init__()
        config = config or sam_r18_config()
        expected = sam_r18_config(semantic=config.semantic_dim > 0)
        if replace(config, name=expected.name) != expected:
            raise ValueError(f"SamR18 has a fixed architecture; config {config} differs from {expected}")
        self.config = config
        self.version = version or f"{config.name}-untrained"
        self.backbone = ResNet3dR18()
        self.neck = FPN3d(STAGE_WIDTHS[:3])
        self.read_out_head = FPN3d(STAGE_WIDTHS[3:])
        self.semantic_head = FPN3d(STAGE_WIDTHS[:3]) if config.semantic_dim else None

    @property
    def has_semantic(self) -> bool:
        """Whether the UAE semantic head is present."""
        return self.semantic_head is not None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embed a batch of volumes.

        The input is padded with air at the high end of each axis to a multiple of
        (4, 16, 16) (a no-op on the usual 16-padded model grid), and the maps are cropped back.

        Args:
            x: Tensor (B, 1, Z, Y, X) float32, normalised intensities on a 2 mm grid.

        Returns:
            ``{"local": (B, 128, ceil(Z/2), ceil(Y/2), ceil(X/2)),
            "global": (B, 128, ceil(Z/4), ceil(Y/16), ceil(X/16))}`` plus ``"semantic"`` (same
            shape as ``"local"``) for UAE; all L2-normalised over channels.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"SamR18 expects (B, 1, Z, Y, X); got {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        pad = [(-n) % m for n, m in zip(size, GLOBAL_STRIDE_ZYX)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), value=AIR)
        feats = self.backbone(x * INPUT_SCALE + INPUT_SHIFT)
        local_size = [math.ceil(n / s) for n, s in zip(size, LOCAL_STRIDE_ZYX)]
        global_size = [math.ceil(n / s) for n, s in zip(size, GLOBAL_STRIDE_ZYX)]

        def crop(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
            return F.normalize(t[:, :, : shape[0], : shape[1], : shape[2]], dim=1)

        out = {
            "local": crop(self.neck(feats[:3]), local_size),
            "global": crop(self.read_out_head(feats[3:]), global_size),
        }
        if self.semantic_head is not None:
            out["semantic"] = crop(self.semantic_head(feats[:3]), local_size)
        return out
