"""MedLAM (Lei et al.): relative-position regression and multi-scale similarity on 3 mm patches.

A small 3D CNN takes a 64^3 patch of a volume at 3 mm isotropic (``uae_ray.volume.prepare_volume``
with ``spacing_mm=3``: identity direction, so array axes are world axes, CT normalised to about
[-1, 1], air = -1) and gives:

* ``projection``: (B, 3) a point ``p`` per patch in a learned "anatomical" space, x, y, z order.
  The world offset from patch a's centre to patch b's centre is predicted as
  ``offset_mm = scale_mm * tanh(p_b - p_a)`` with ``scale_mm = (600, 600, 1500)`` in x, y, z
  (the paper's ``[1500, 600, 600]`` is in z, y, x order: the long axis of the body is z).
* ``features``: multi-scale feature maps, L2-normalised over channels, at strides 2, 4 and 8 of
  the patch (6, 12 and 24 mm), for the multi-scale-similarity refinement. Map voxel ``i`` of a
  stride-``s`` map corresponds to patch voxel ``s * i`` (as the embedding network's maps).

Tensors are (B, C, Z, Y, X); the patch centre is voxel ``(size - 1) / 2`` rounded down, i.e.
voxel 32 of 64 along each axis (:func:`patch_centre_index`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uae_ray.models.config import DEFAULT_WINDOWS
from uae_ray.models.ops import Conv3d


@dataclass(frozen=True)
class MedLAMConfig:
    """Hyper-parameters and geometry of the MedLAM network.

    Attributes:
        name: registry name (``"medlam-tiny"``).
        arch: network class, ``"medlam"``.
        input_spacing_mm: isotropic input voxel size (MedLAM: 3 mm).
        patch_size: cubic patch side in voxels (MedLAM: 64).
        scale_mm: offset scale per axis, x, y, z (paper: [1500, 600, 600] in z, y, x).
        widths: channels of the four stride-2 stages (6, 12, 24, 48 mm).
        feature_dim: channels of each similarity feature map.
        feature_strides: strides of the similarity maps (subset of 2, 4, 8).
        windows: fixed intensity windows (centre, half-width) added as input channels.
    """

    name: str = "medlam-tiny"
    arch: str = "medlam"
    input_spacing_mm: float = 3.0
    patch_size: int = 64
    scale_mm: tuple[float, float, float] = (600.0, 600.0, 1500.0)
    widths: tuple[int, int, int, int] = (8, 16, 32, 64)
    feature_dim: int = 32
    feature_strides: tuple[int, ...] = (2, 4, 8)
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MedLAMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown MedLAMConfig fields {sorted(unknown)}; known: {sorted(known)}")

        def _tuple(v: Any) -> Any:
            return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v

        return cls(**{k: _tuple(v) for k, v in data.items()})


def patch_centre_index(size: int) -> float:
    """Continuous voxel index of a patch's centre along each axis: ``(size - 1) / 2`` (31.5 for
    64), the convention of :func:`extract_patches` and of the training views."""
    return (size - 1) / 2.0


def extract_patches(volume: torch.Tensor, centres_xyz: torch.Tensor, size: int, pad_value: float = -1.0) -> torch.Tensor:
    """Axis-aligned cubic patches (trilinear) of a volume around continuous voxel centres.

    Patch voxel ``u`` (x, y, z) samples volume position ``centre + u - (size - 1) / 2``.

    Args:
        volume: (C, Z, Y, X) tensor.
        centres_xyz: (N, 3) continuous voxel indices (x, y, z).
        size: patch side.
        pad_value: value outside the volume.

    Returns:
        (N, C, size, size, size).
    """
    c = volume.shape[0]
    r = torch.arange(size, dtype=torch.float64) - patch_centre_index(size)
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    offsets = torch.stack([xx, yy, zz], dim=-1)  # (S, S, S, 3) x, y, z
    pts = centres_xyz.to(torch.float64)[:, None, None, None, :] + offsets[None]
    sizes = torch.tensor(volume.shape[1:][::-1], dtype=torch.float64)
    grid = (2.0 * pts / (sizes - 1).clamp(min=1) - 1.0).to(volume.dtype)
    n = centres_xyz.shape[0]
    vol = (volume - pad_value)[None].expand(n, c, *volume.shape[1:])
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out + pad_value


def _block(cin: int, cout: int, stride: int, convs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            Conv3d(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.LeakyReLU(0.1, inplace=True),
        ]
    return nn.Sequential(*layers)


class MedLAMNet(nn.Module):
    """The MedLAM network: a 4-stage strided 3D CNN (one convolution at 6 mm, two at 12, 24, 48 mm) with a relative-position regression head
    (global pooling -> MLP -> 3) and three similarity heads (1x1x1 convolutions of stages 1-3).

    Args:
        config: :class:`MedLAMConfig`.
    """

    def __init__(self, config: MedLAMConfig | None = None) -> None:
        super().__init__()
        self.config = config or MedLAMConfig()
        cfg = self.config
        centres = torch.tensor([w[0] for w in cfg.windows], dtype=torch.float32)
        halves = torch.tensor([w[1] for w in cfg.windows], dtype=torch.float32)
        self.register_buffer("window_centres", centres.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("window_halves", halves.view(1, -1, 1, 1, 1), persistent=False)
        cin = 1 + len(cfg.windows)
        w1, w2, w3, w4 = cfg.widths
        self.stage1 = _block(cin, w1, 2, convs=1)  # the 32^3 level dominates the cost on a CPU
        self.stage2 = _block(w1, w2, 2)
        self.stage3 = _block(w2, w3, 2)
        self.stage4 = _block(w3, w4, 2)
        self.position_head = nn.Sequential(nn.Linear(w4, 64), nn.LeakyReLU(0.1, inplace=True), nn.Linear(64, 3))
        stage_width = {2: w1, 4: w2, 8: w3}
        self.feature_heads = nn.ModuleDict(
            {str(s): Conv3d(stage_width[s], cfg.feature_dim, 1) for s in cfg.feature_strides}
        )
        self.register_buffer("scale", torch.tensor(cfg.scale_mm, dtype=torch.float32), persistent=False)
        self.version = f"{cfg.name}-untrained"

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        wins = torch.clamp((x - self.window_centres) / self.window_halves, -1.0, 1.0)
        return torch.cat([x + 1.0, wins], dim=1)  # air -> 0, like the zero padding

    def forward(self, x: torch.Tensor, features: bool = True) -> dict[str, Any]:
        """Run the network.

        Args:
            x: (B, 1, Z, Y, X) normalised patches at 3 mm.
            features: also compute the similarity maps.

        Returns:
            ``{"projection": (B, 3) x, y, z, "features": {stride: (B, C, z, y, x)}}`` (features
            L2-normalised over C; empty dict when ``features`` is False).
        """
        h = self._inputs(x)
        c1 = self.stage1(h)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        p = self.position_head(c4.mean(dim=(2, 3, 4)))
        out: dict[str, Any] = {"projection": p, "features": {}}
        if features:
            stages = {2: c1, 4: c2, 8: c3}
            out["features"] = {
                int(s): F.normalize(head(stages[int(s)]), dim=1) for s, head in self.feature_heads.items()
            }
        return out

    def offset(self, p_from: torch.Tensor, p_to: torch.Tensor) -> torch.Tensor:
        """Predicted world offset (mm, x, y, z) from one patch centre to another:
        ``scale_mm * tanh(p_to - p_from)``; shapes (..., 3)."""
        return self.scale * torch.tanh(p_to - p_from)


def build_medlam(checkpoint: str | None = None) -> MedLAMNet:
    """The default tiny MedLAM network, optionally with weights (see :func:`load_medlam`)."""
    if checkpoint is not None:
        return load_medlam(checkpoint)
    return MedLAMNet(MedLAMConfig())


# -- checkpoints -------------------------------------------------------------------------------

#: Shipped MedLAM weights (``uae_ray/models/weights/``).
MEDLAM_CHECKPOINT_NAME = "medlam_tiny_v0.pt"


def default_medlam_checkpoint():
    """Path of the shipped MedLAM weights."""
    from uae_ray.models.checkpoint import WEIGHTS_DIR

    return WEIGHTS_DIR / MEDLAM_CHECKPOINT_NAME


def save_medlam(model: MedLAMNet, path, meta: dict[str, Any] | None = None) -> str:
    """Writes ``{"config", "state_dict" (float16), "meta"}``; returns the version string
    ``"<meta version>+<sha8>"``."""
    from pathlib import Path

    from uae_ray.models.digest import version_string

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta.setdefault("version", f"{model.config.name}-v0")
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state, "meta": meta}, path)
    return version_string(meta['version'], path)


def load_medlam(checkpoint=None) -> MedLAMNet:
    """Loads MedLAM weights in eval mode (``None``: the shipped ones).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a MedLAM checkpoint (one line naming the file).
    """
    from pathlib import Path

    from uae_ray.models.digest import version_string

    path = Path(checkpoint) if checkpoint is not None else default_medlam_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MedLAM checkpoint not found")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not {"config", "state_dict"} <= set(data):
        raise ValueError(f"{path}: not a MedLAM checkpoint (needs 'config' and 'state_dict')")
    if data["config"].get("arch") != "medlam":
        raise ValueError(f"{path}: a {data['config'].get('arch', 'resnet_fpn')!r} checkpoint, not a MedLAM one")
    model = MedLAMNet(MedLAMConfig.from_dict(data["config"]))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in data["state_dict"].items()})
    meta = data.get("meta", {})
    model.version = version_string(meta.get('version', model.config.name + '-v0'), path)
    model.meta = meta  # type: ignore[attr-defined]
    return model.eval()


__all__ = [
    "MEDLAM_CHECKPOINT_NAME",
    "MedLAMConfig",
    "MedLAMNet",
    "build_medlam",
    "default_medlam_checkpoint",
    "extract_patches",
    "load_medlam",
    "patch_centre_index",
    "save_medlam",
]
