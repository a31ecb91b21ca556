"""One-shot landmark detection: a template with named points, found in any target scan.

Core logic only (no Ray, Triton or S3): give it an :class:`~uae_ray.matching.Embedder`.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from uae_ray.matching import DEFAULT_METHOD, EmbeddingMaps, Embedder, embed_image, find_points
from uae_ray.tasks.points_io import Detection, NamedPoints
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)


def check_points_inside(points: NamedPoints, image: sitk.Image, role: str) -> None:
    """Refuse points that lie outside an image (e.g. RAS points given as LPS, or a wrong frame).

    A template point outside the template has no embedding to match, so a "found" point in a
    target would mean nothing.

    Raises:
        ValueError: naming up to three of the outside points and the image's world box.
    """
    grid = Grid.from_image(image)
    outside = np.flatnonzero(~grid.contains(np.asarray(points.xyz, dtype=np.float64).reshape(-1, 3)))
    if len(outside):
        corners = grid.corners_world()
        box = " .. ".join("(" + ", ".join(f"{v:.0f}" for v in c) + ")" for c in (corners.min(0), corners.max(0)))
        named = ", ".join(f"{points.names[i]} ({', '.join(f'{v:.1f}' for v in points.xyz[i])})" for i in outside[:3])
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        flipped = np.asarray(points.xyz, dtype=np.float64).reshape(-1, 3)[outside] * np.array([-1.0, -1.0, 1.0])
        hint = ("; with x and y negated they would all be inside: the file looks like RAS (3D Slicer, nibabel), "
                "convert with x, y = -x, -y or save a Slicer .mrk.json") if grid.contains(flipped).all() else \
            "; points must be LPS millimetres in the image's frame (RAS points have x and y negated)"
        raise ValueError(f"{len(outside)} point(s) outside the {role} image (world box {box} mm, LPS): {named}{more}"
                         f"{hint}")


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
        check_points_inside(points, template, "template")
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
