"""3D ResNet-FPN that maps a 2 mm volume to local (4 mm) and global (16 mm) embeddings, plus an
optional UAE semantic embedding (4 mm) when ``config.semantic_dim > 0``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.ops import Conv3d, upsample_aligned


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm3d(cout),
    )


class BasicBlock3d(nn.Module):
    """ResNet basic block (two 3x3x3 convolutions) with an optional strided projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride, dilation)
        self.conv2 = _conv_bn(cout, cout, 1, dilation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.relu(self.conv1(x), inplace=True)
        return F.relu(self.conv2(y) + self.shortcut(x), inplace=True)


class SemanticNeck(nn.Module):
    """Light UAE semantic head: a second FPN neck on the backbone stages of the tiny network.

    The published UAE semantic head is a second copy of the local FPN neck on the same backbone
    stages (``sam_r18.SamR18.semantic_head``). For the tiny CPU network the second neck is kept
    cheap: its own 1x1x1 laterals of the three stages, one 3x3x3 convolution at the 8 mm level
    (organ-scale context, 8x cheaper than at 4 mm), nearest-aligned upsampling to the 4 mm level
    and a 1x1x1 projection to ``out_dim`` channels. It shares no weights with the local neck,
    so the semantic loss reaches the backbone but not the local embedding's own layers.

    Args:
        widths: Channel widths of the three backbone stages (4, 8, 16 mm).
        dim: Width of the neck.
        out_dim: Channels of the semantic embedding.
    """

    def __init__(self, widths: tuple[int, int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.lat1 = Conv3d(w1, dim, 1)
        self.lat2 = Conv3d(w2, dim, 1)
        self.lat3 = Conv3d(w3, dim, 1)
        self.mid = Conv3d(dim, dim, 3, padding=1)
        self.out = Conv3d(dim, out_dim, 1)

    def forward(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor) -> torch.Tensor:
        """Semantic features (B, out_dim, *c1 spatial), not normalised."""
        s2 = self.lat2(c2) + upsample_aligned(self.lat3(c3), 2, tuple(c2.shape[2:]))
        s2 = F.relu(self.mid(s2), inplace=True)
        s1 = self.lat1(c1) + upsample_aligned(s2, 2, tuple(c1.shape[2:]))
        return self.out(F.relu(s1, inplace=True))


class EmbeddingNet(nn.Module):
    """3D ResNet-FPN anatomical embedding network (SAM-style local + global heads, and UAE's
    semantic head when ``config.semantic_dim > 0``, see :class:`SemanticNeck`).

    Input is a normalised volume on the model grid (``uae_ray.volume.prepare_volume``: 2 mm
    isotropic, identity direction, air = -1). Inside, the intensity is shifted so that air is 0
    (zero padding of the convolutions then looks like air) and a few fixed intensity windows
    are added as channels (stored as buffers, so they travel with the weights).

    Geometry: stem conv stride 2 (4 mm), stages at 4, 8 and 16 mm; FPN top-down to the 4 mm
    level. Voxel ``i`` of a map of stride ``s`` corresponds to input voxel ``s * i``.

    Attributes:
        config: The :class:`EmbeddingConfig`.
        version: Model version string stored with every result ("tiny-v0+<sha8>").
    """

    def __init__(self, config: EmbeddingConfig, version: str | None = None) -> None:
        super().__init__()
        if (config.local_stride, config.global_stride) != (2, 8):
            raise ValueError(
                f"EmbeddingNet supports local_stride=2, global_stride=8; got "
                f"{config.local_stride}, {config.global_stride}"
            )
        self.config = config
        self.version = version or f"{config.name}-untrained"
        w1, w2, w3 = config.widths
        b1, b2, b3 = config.blocks
        windows = torch.tensor(config.windows, dtype=torch.float32).reshape(-1, 2)
        self.register_buffer("window_centre", windows[:, 0].reshape(1, -1, 1, 1, 1), persistent=True)
        self.register_buffer("window_half", windows[:, 1].reshape(1, -1, 1, 1, 1), persistent=True)
        cin = 1 + windows.shape[0]

        self.stem = nn.Sequential(_conv_bn(cin, w1, stride=2), nn.ReLU(inplace=True))
        self.stage1 = nn.Sequential(*[BasicBlock3d(w1, w1) for _ in range(b1)])
        self.stage2 = nn.Sequential(
            BasicBlock3d(w1, w2, stride=2), *[BasicBlock3d(w2, w2) for _ in range(b2 - 1)]
        )
        self.stage3 = nn.Sequential(
            BasicBlock3d(w2, w3, stride=2),
            *[BasicBlock3d(w3, w3) for _ in range(b3 - 1)],
            *[BasicBlock3d(w3, w3, dilation=d) for d in config.dilations],
        )
        f = config.fpn_dim
        self.lat1 = Conv3d(w1, f, 1)
        self.lat2 = Conv3d(w2, f, 1)
        self.lat3 = Conv3d(w3, f, 1)
        self.local_head = nn.Sequential(
            Conv3d(f, f, 3, padding=1), nn.ReLU(inplace=True), Conv3d(f, config.local_dim, 1)
        )
        self.global_head = nn.Sequential(
            Conv3d(w3, w3, 3, padding=1), nn.ReLU(inplace=True), Conv3d(w3, config.global_dim, 1)
        )
        self.semantic_head = SemanticNeck((w1, w2, w3), f, config.semantic_dim) if config.semantic_dim > 0 else None

    @property
    def has_semantic(self) -> bool:
        """Whether the UAE semantic head is present (``config.semantic_dim > 0``)."""
        return self.semantic_head is not None

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Shift air to 0 and append the window channels.

        Args:
            x: Normalised volume (B, 1, Z, Y, X), air = -1.

        Returns:
            Tensor (B, 1 + n_windows, Z, Y, X).
        """
        win = torch.clamp((x - self.window_centre) / self.window_half, -1.0, 1.0)
        # Shift windows so that air gives 0 in every channel (zero padding == air).
        air = torch.clamp((-1.0 - self.window_centre) / self.window_half, -1.0, 1.0)
        return torch.cat([x + 1.0, win - air], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embed a batch of volumes.

        Args:
            x: Tensor (B, 1, Z, Y, X) float32, normalised intensities on a 2 mm grid.

        Returns:
            ``{"local": (B, local_dim, ceil(Z/2), ceil(Y/2), ceil(X/2)),
            "global": (B, global_dim, ~Z/8, ~Y/8, ~X/8)}``, plus ``"semantic"`` (B, semantic_dim,
            same grid as ``"local"``) when the model has a semantic head; all L2-normalised over
            channels.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"EmbeddingNet expects (B, 1, Z, Y, X); got {tuple(x.shape)}")
        c1 = self.stage1(self.stem(self.preprocess(x)))
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        p3 = self.lat3(c3)
        p2 = self.lat2(c2) + upsample_aligned(p3, 2, tuple(c2.shape[2:]))
        p1 = self.lat1(c1) + upsample_aligned(p2, 2, tuple(c1.shape[2:]))
        local = F.normalize(self.local_head(p1), dim=1)
        glob = F.normalize(self.global_head(c3), dim=1)
        out = {"local": local, "global": glob}
        if self.semantic_head is not None:
            out["semantic"] = F.normalize(self.semantic_head(c1, c2, c3), dim=1)
        return out
