"""Configuration of the anatomical embedding network."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Intensity windows applied inside the network to the normalised input (see
# ``uae_ray.volume.normalize_ct``: HU clipped to [-1024, 3071] and mapped linearly to
# [-1, 1]). Each window (centre, half-width) is in normalised units; the default ones are
# lung (-600 +- 600 HU), soft tissue (40 +- 200 HU) and bone (700 +- 700 HU).
_HU_LO, _HU_HI = -1024.0, 3071.0


def hu_to_normalised(hu: float) -> float:
    """Map a Hounsfield value to the normalised CT intensity scale used as network input.

    Args:
        hu: Intensity in HU.

    Returns:
        The value ``normalize_ct`` gives for ``hu`` (linear map of [-1024, 3071] to [-1, 1]).
    """
    return 2.0 * (hu - _HU_LO) / (_HU_HI - _HU_LO) - 1.0


def _window(centre_hu: float, half_width_hu: float) -> tuple[float, float]:
    return (hu_to_normalised(centre_hu), half_width_hu * 2.0 / (_HU_HI - _HU_LO))


DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = (
    _window(-600.0, 600.0),
    _window(40.0, 200.0),
    _window(700.0, 700.0),
)


@dataclass(frozen=True)
class EmbeddingConfig:
    """Hyper-parameters and geometry of an embedding network (``EmbeddingNet`` or ``SamR18``).

    Attributes:
        name: Registry name of the architecture (e.g. ``"tiny"``, ``"sam-r18"``).
        arch: Network class: ``"resnet_fpn"`` (:class:`~uae_ray.models.resnet_fpn.EmbeddingNet`)
            or ``"sam-r18"`` (:class:`~uae_ray.models.sam_r18.SamR18`, the published SAM/UAE
            network). Checkpoints written before this field existed read as ``"resnet_fpn"``.
        input_spacing_mm: Isotropic voxel size (mm) the network expects as input.
        local_stride: Stride of the local map relative to the input grid (2 -> 4 mm).
        global_stride: Stride of the global map relative to the input grid (8 -> 16 mm); either
            one int (isotropic) or a per-axis ``(z, y, x)`` tuple (``"sam-r18"``: (4, 16, 16)).
        pad_multiple: Input sizes are padded (by ``uae_ray.volume.model_grid``) to a multiple
            of this.
        widths: Channel widths of the residual stages at strides 2, 4 and 8 (``"sam-r18"``: the
            four ResNet-18 stages, 64/128/256/512).
        blocks: Number of residual blocks of each stage.
        dilations: Dilation of the extra context blocks of the deepest stage (one block each).
        fpn_dim: Channel width of the FPN pyramid.
        local_dim: Channels of the local embedding.
        global_dim: Channels of the global embedding.
        semantic_dim: Channels of the semantic (UAE) embedding at the local stride; 0 = none.
        windows: Fixed intensity windows (centre, half-width) in normalised input units; each
            adds an input channel ``clamp((x - centre) / half_width, -1, 1)``.
    """

    name: str = "tiny"
    arch: str = "resnet_fpn"
    input_spacing_mm: float = 2.0
    local_stride: int = 2
    global_stride: int | tuple[int, int, int] = 8
    pad_multiple: int = 16
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (1, 2, 2)
    dilations: tuple[int, ...] = (2, 4)
    fpn_dim: int = 32
    local_dim: int = 32
    global_dim: int = 32
    semantic_dim: int = 0
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS

    def stride_zyx(self, level: str) -> tuple[int, int, int]:
        """Per-axis ``(z, y, x)`` stride of a map relative to the input grid.

        Args:
            level: ``"local"``, ``"semantic"`` (same grid as local) or ``"global"``.
        """
        if level in ("local", "semantic"):
            s: int | tuple[int, ...] = self.local_stride
        elif level == "global":
            s = self.global_stride
        else:
            raise ValueError(f"unknown map level {level!r}; known: local, semantic, global")
        return (s, s, s) if isinstance(s, int) else (int(s[0]), int(s[1]), int(s[2]))

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (lists for tuples) suitable for ``torch.save``/JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EmbeddingConfig":
        """Build a config from :meth:`to_dict` output; unknown keys raise ``ValueError``.

        Fields missing from ``data`` (e.g. ``arch``, ``semantic_dim`` in older checkpoints)
        take their defaults.

        Args:
            data: Mapping of field names to values (lists are converted back to tuples).
        """
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown EmbeddingConfig fields {sorted(unknown)}; known: {sorted(known)}")

        def _tuple(v: Any) -> Any:
            return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v

        return cls(**{k: _tuple(v) for k, v in data.items()})
