"""One-shot landmark detection: a template with named points, found in any target scan.

Core logic only (no Ray, Triton or S3): give it an :class:`~uae_ray.matching.Embedder`.
"""

from __future__ import annotations

import logging

import SimpleITK as sitk

from uae_ray.matching import DEFAULT_METHOD, EmbeddingMaps, Embedder, embed_image, find_points
from uae_ray.tasks.points_io import Detection, NamedPoints

logger = logging.getLogger(__name__)


class LandmarkDetector:
    """Embeds the template once, then detects its points in many targets (SAM predictor style).

    Args:
        embedder: any :class:`Embedder` (in-process torch or Triton).
        template: the template image.
        points: named world points (LPS mm) on the template.
        modality: "CT" or "MR" for the template; ``None`` detects it from the image.
        method: Matching method, ``"nn"`` or ``"fixed-point"`` (see :func:`~uae_ray.matching.find_points`).
    """

    def __init__(
        self,
        embedder: Embedder,
        template: sitk.Image,
        points: NamedPoints,
        modality: str | None = None,
        method: str = DEFAULT_METHOD,
    ) -> None:
        self.embedder = embedder
        self.points = points
        self.method = method
        self.template_maps = embed_image(template, embedder, modality)

    @property
    def model_version(self) -> str:
        return self.template_maps.model_version

    def detect_maps(self, target: EmbeddingMaps, target_name: str) -> list[Detection]:
        """Detects the template's points in precomputed target embeddings."""
        if target.model_version != self.template_maps.model_version:
            raise ValueError(
                f"{target_name}: embeddings of model {target.model_version} cannot be matched "
                f"against a template embedded with {self.template_maps.model_version}"
            )
        r = find_points(self.template_maps, self.points.xyz, target, self.method)
        return [
            Detection(target_name, name, float(p[0]), float(p[1]), float(p[2]), float(s), bool(f))
            for name, p, s, f in zip(self.points.names, r.points, r.scores, r.found)
        ]

    def detect(self, target: sitk.Image, target_name: str, modality: str | None = None) -> list[Detection]:
        """Embeds ``target`` and detects the template's points in it."""
        return self.detect_maps(embed_image(target, self.embedder, modality), target_name)
