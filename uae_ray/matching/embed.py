"""Embedding maps of an image and the :class:`Embedder` protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import SimpleITK as sitk

from uae_ray.models.config import EmbeddingConfig
from uae_ray.volume import Grid, PreparedVolume, body_mask, detect_modality, prepare_volume


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns a prepared volume into embedding maps (in-process torch, Triton).

    An embedder may also define ``finish(maps) -> EmbeddingMaps``, applied by
    :func:`embed_prepared` to the maps it makes (e.g. to see them as a storage tier stores them).
    """

    version: str
    config: EmbeddingConfig

    def embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        """Embed a prepared volume.

        Args:
            volume: (Z, Y, X) float32 normalised volume on the model grid.

        Returns:
            ``{"local": (Cl, z, y, x), "global": (Cg, z, y, x)}`` float32, L2-normalised on C,
            plus ``"semantic"`` (Cs, z, y, x) on the local grid when the model has a semantic
            head (``config.semantic_dim > 0``).
        """
        ...


@dataclass
class EmbeddingMaps:
    """Local, global and (optionally) semantic embedding maps of one image, with their world geometry.

    Attributes:
        local: (Cl, z, y, x) float32/float16 local embeddings (L2-normalised over C).
        global_: (Cg, z, y, x) float32/float16 global embeddings (L2-normalised over C).
        local_grid: Grid of ``local`` (model grid origin, spacing * local_stride, identity
            direction, size = map size in x, y, z).
        global_grid: Grid of ``global_`` (spacing * global_stride).
        valid: (z, y, x) bool on the local grid: True where the map voxel lies inside the
            image's field of view.
        model_version: Version string of the model that made the maps.
        semantic: (Cs, z, y, x) float32/float16 UAE semantic embeddings on the local grid
            (L2-normalised over C), or ``None`` for a model without a semantic head.
        body: (z, y, x) bool on the local grid: the body mask (:func:`uae_ray.volume.body_mask`,
            within ``valid``), or ``None`` when unknown. Compact storage keeps the local and
            semantic vectors inside it only.
    """

    local: np.ndarray
    global_: np.ndarray
    local_grid: Grid
    global_grid: Grid
    valid: np.ndarray
    model_version: str
    semantic: np.ndarray | None = field(default=None)
    body: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.local.shape[1:] != self.local_grid.shape_zyx:
            raise ValueError(f"local map shape {self.local.shape} does not match its grid {self.local_grid.size}")
        if self.global_.shape[1:] != self.global_grid.shape_zyx:
            raise ValueError(f"global map shape {self.global_.shape} does not match its grid {self.global_grid.size}")
        if self.valid.shape != self.local.shape[1:]:
            raise ValueError(f"valid mask shape {self.valid.shape} != local map shape {self.local.shape[1:]}")
        if self.semantic is not None and (self.semantic.ndim != 4 or self.semantic.shape[1:] != self.local.shape[1:]):
            raise ValueError(f"semantic map shape {self.semantic.shape} does not match the local map {self.local.shape}")
        if self.body is not None and self.body.shape != self.valid.shape:
            raise ValueError(f"body mask shape {self.body.shape} != local map shape {self.valid.shape}")

    def in_view(self, points_world: np.ndarray) -> np.ndarray:
        """(N,) True where a world point's (N, 3; LPS mm) nearest local-map voxel is valid
        (inside the image's field of view)."""
        idx = np.rint(self.local_grid.world_to_index(np.asarray(points_world, np.float64).reshape(-1, 3))).astype(int)
        shape = np.array(self.valid.shape[::-1])  # x, y, z
        ok = np.all((idx >= 0) & (idx < shape), axis=1)
        out = np.zeros(len(idx), dtype=bool)
        out[ok] = self.valid[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
        return out

    @property
    def has_semantic(self) -> bool:
        """Whether the maps carry a semantic level."""
        return self.semantic is not None


def map_grid(model: Grid, stride: int | tuple[int, int, int], shape_zyx: tuple[int, ...]) -> Grid:
    """Grid of a map of stride ``stride`` over ``model`` (voxel i <-> model voxel stride * i).

    Args:
        model: The model grid (2 mm, identity direction).
        stride: Map stride relative to the model grid, or one per axis (z, y, x).
        shape_zyx: Map shape (z, y, x).
    """
    stride_xyz = (stride,) * 3 if isinstance(stride, int) else tuple(stride)[::-1]
    return Grid(
        origin=model.origin,
        spacing=tuple(s * k for s, k in zip(model.spacing, stride_xyz)),
        direction=model.direction,
        size=(shape_zyx[2], shape_zyx[1], shape_zyx[0]),
    )


def maps_from_outputs(
    outputs: dict[str, np.ndarray], prepared: PreparedVolume, config: EmbeddingConfig, model_version: str
) -> EmbeddingMaps:
    """Wrap raw network outputs for a prepared volume as :class:`EmbeddingMaps`.

    Args:
        outputs: ``{"local": (Cl, z, y, x), "global": (Cg, z, y, x)}`` and optionally
            ``"semantic"`` (Cs, z, y, x) on the local grid.
        prepared: The prepared volume that was embedded (gives the model grid and validity).
        config: Embedding config (strides).
        model_version: Version string of the model.
    """
    local, glob = outputs["local"], outputs["global"]
    sz, sy, sx = config.stride_zyx("local")
    valid = np.asarray(prepared.valid, dtype=bool)[::sz, ::sy, ::sx][: local.shape[1], : local.shape[2], : local.shape[3]]
    body = body_mask(prepared.array, prepared.modality, (sz, sy, sx), valid.shape, valid)
    return EmbeddingMaps(
        local=local,
        global_=glob,
        local_grid=map_grid(prepared.grid, (sz, sy, sx), local.shape[1:]),
        global_grid=map_grid(prepared.grid, config.stride_zyx("global"), glob.shape[1:]),
        valid=valid,
        model_version=model_version,
        semantic=outputs.get("semantic"),
        body=body,
    )


def embed_prepared(prepared: PreparedVolume, embedder: Embedder) -> EmbeddingMaps:
    """Embed an already prepared volume (see :func:`embed_image`), then apply the embedder's
    optional ``finish`` hook."""
    maps = maps_from_outputs(embedder.embed(prepared.array), prepared, embedder.config, embedder.version)
    finish = getattr(embedder, "finish", None)
    return finish(maps) if finish is not None else maps


def prepare_for(image: sitk.Image, embedder: Embedder, modality: str | None = None) -> PreparedVolume:
    """The image resampled and normalised on ``embedder``'s model grid (``modality`` ``"CT"`` /
    ``"MR"``, detected from the intensities when None)."""
    modality = detect_modality(image, "<image>", modality)
    cfg = embedder.config
    return prepare_volume(image, modality, spacing_mm=cfg.input_spacing_mm, pad_multiple=cfg.pad_multiple)


def embed_image(image: sitk.Image, embedder: Embedder, modality: str | None = None) -> EmbeddingMaps:
    """Prepare an image on the model grid and embed it.

    Args:
        image: 3D CT or MR image.
        embedder: The backend (in-process torch or Triton).
        modality: ``"CT"`` or ``"MR"``; detected from the intensities when None.

    Returns:
        The :class:`EmbeddingMaps` of the image.
    """
    return embed_prepared(prepare_for(image, embedder, modality), embedder)
