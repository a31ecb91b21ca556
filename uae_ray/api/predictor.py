"""Embed a scan once, answer many point queries: the segment-anything predictor pattern.

>>> uae = UAE()                                   # the shipped default model, in this process
>>> template = uae.embed("template.nii.gz")       # or a SimpleITK image
>>> target = uae.embed("target.nii.gz")
>>> found = template.find([[10.0, -20.0, 35.0]], target)
>>> found.points, found.scores, found.found       # (1, 3) LPS mm, (1,), (1,) bool

World points are (N, 3) arrays of x, y, z in the image's physical frame: DICOM / ITK LPS
coordinates in millimetres (what SimpleITK's ``TransformIndexToPhysicalPoint`` returns; 3D Slicer
and nibabel show RAS, i.e. x and y negated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from uae_ray.api.inputs import read_image
from uae_ray.api.models import get_embedder
from uae_ray.matching import DEFAULT_METHOD, EmbeddingMaps, Embedder, MatchResult, embed_image, find_points
from uae_ray.matching.nn import sample_embeddings
from uae_ray.tasks.landmarks import check_points_inside
from uae_ray.tasks.points_io import NamedPoints
from uae_ray.volume import detect_modality

ImageInput = sitk.Image | str | os.PathLike


@dataclass
class EmbeddedScan:
    """A scan and its embedding maps (computed once).

    Attributes:
        image: The scan (SimpleITK, as read).
        modality: ``"CT"`` or ``"MR"``.
        maps: The :class:`~uae_ray.matching.EmbeddingMaps` (local, global and semantic levels,
            each (C, z, y, x) on its own grid of the model's stride).
    """

    image: sitk.Image
    modality: str
    maps: EmbeddingMaps

    @property
    def model_version(self) -> str:
        return self.maps.model_version

    def find(self, points_xyz: np.ndarray | list, target: "EmbeddedScan", method: str = DEFAULT_METHOD) -> MatchResult:
        """Finds (N, 3) world points (LPS mm) of this scan in ``target``.

        Returns:
            :class:`~uae_ray.matching.MatchResult`: ``points`` (N, 3) LPS mm in the target,
            ``scores`` (N,) cosine similarity, ``found`` (N,) False where the method abstains
            (point likely outside the target's view, or not consistent), ``consistency`` (N,).

        Raises:
            ValueError: a point outside this scan, or maps of different models.
        """
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        check_points_inside(NamedPoints(tuple(f"point {i}" for i in range(len(pts))), pts), self.image, "template")
        if target.model_version != self.model_version:
            raise ValueError(f"maps of different models: {self.model_version} vs {target.model_version}")
        return find_points(self.maps, pts, target.maps, method)

    def features(self, points_xyz: np.ndarray | list) -> dict[str, np.ndarray]:
        """The embeddings at (N, 3) world points: ``{"local": (N, Cl), "global": (N, Cg)}`` plus
        ``"semantic"`` (N, Cs) when the model has a semantic head (trilinear, L2-normalised maps)."""
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        if self.maps.semantic is not None:
            local, global_, semantic = sample_embeddings(self.maps, pts, with_semantic=True)
            return {"local": local, "global": global_, "semantic": semantic}
        local, global_ = sample_embeddings(self.maps, pts)
        return {"local": local, "global": global_}


class UAE:
    """The embedding model, in this process or on a Triton server.

    Args:
        checkpoint: A shipped model name (``uae-ray landmarks --help`` lists them), a checkpoint
            file, or ``None`` for the default.
        triton_url: ``host:port`` of a Triton Inference Server serving ``model_repo/``; the
            model then runs there (``checkpoint`` must be ``None``).
        embedder: Any :class:`~uae_ray.matching.Embedder` (overrides the two above).
        device: In-process model: ``"auto"`` (CUDA when torch has it), ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, checkpoint: str | None = None, triton_url: str | None = None,
                 embedder: Embedder | None = None, device: str | None = None) -> None:
        self.embedder = embedder or get_embedder(triton_url, checkpoint=checkpoint, device=device)

    @property
    def version(self) -> str:
        return self.embedder.version

    def embed(self, image: ImageInput, modality: str | None = None) -> EmbeddedScan:
        """Reads (path or ``s3://`` URI; DICOM folders too) and embeds a scan.

        Args:
            modality: ``"CT"`` or ``"MR"``; ``None`` detects it from the intensities.
        """
        img = read_image(image)
        name = image if isinstance(image, (str, os.PathLike)) else "image"
        mod = detect_modality(img, str(name), modality)
        return EmbeddedScan(img, mod, embed_image(img, self.embedder, mod))


__all__ = ["EmbeddedScan", "UAE"]
