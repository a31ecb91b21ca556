"""Few-shot organ localization: k annotated support scans -> a 3D box per organ in a target.

Two localizers, one output (:class:`OrganBox`):

* ``embedding`` (:class:`EmbeddingLocalizer`): the anatomical embeddings of
  :mod:`uae_ray.matching`. Per support, the organ is carried into the target
  (:func:`estimate_organs`, two modes: ``"extremes"`` matches the organ's six extreme points by
  fixed-point matching; ``"transfer"`` matches points spread over the organ and carries the
  support's organ over by their median displacement, or a robust rigid / affine fit; each match
  searched coarse to fine, in a window around the global level's best voxel). The per-support
  estimates of the six extreme points are then voted over the k supports (:func:`vote`).
* ``medlam`` (:class:`MedLAMLocalizer`): the MedLAM network (:mod:`uae_ray.models.medlam`):
  relative-position regression (one jump from the scan centre towards each extreme point of the
  support), then one multi-scale-similarity refinement in a 64^3 crop.

Box = per-axis min/max of the six voted points, clipped to the target's field of view (the
box of its voxel centres). Geometry: world points are LPS mm arrays (N, 3), x, y, z; a box is
``(xmin, ymin, zmin, xmax, ymax, zmax)`` (the boxes CSV contract). Core logic only: no Ray,
Triton or S3 here (give it an :class:`~uae_ray.matching.Embedder`).
"""

from uae_ray.tasks.localize.boxes import (
    box_iou,
    CUT_POLICIES,
    DEFAULT_CUT_POLICY,
    DEFAULT_EMBEDDING_MODE,
    DEFAULT_LOCALIZE_METHOD,
    DEFAULT_WINDOW_MM,
    EMBEDDING_MODES,
    LOCALIZE_METHODS,
    OrganBox,
    STATUS_NO_SUPPORT,
    STATUS_NOT_FOUND,
    STATUS_OK,
    STATUS_OUTSIDE,
    STATUS_PARTIAL,
    STATUSES,
    SupportEstimate,
    wall_distance,
)
from uae_ray.tasks.localize.vote import clip_box, vote, weighted_median
from uae_ray.tasks.localize.embedding import EmbeddingLocalizer, EmbeddingLocalizerConfig, estimate_organs
from uae_ray.tasks.localize.medlam import MedLAMLocalizer, MedLAMScan, MedLAMSupportOrgan

__all__ = [
    "CUT_POLICIES",
    "DEFAULT_CUT_POLICY",
    "DEFAULT_EMBEDDING_MODE",
    "DEFAULT_WINDOW_MM",
    "DEFAULT_LOCALIZE_METHOD",
    "EMBEDDING_MODES",
    "EmbeddingLocalizer",
    "EmbeddingLocalizerConfig",
    "LOCALIZE_METHODS",
    "MedLAMLocalizer",
    "MedLAMScan",
    "MedLAMSupportOrgan",
    "OrganBox",
    "STATUSES",
    "STATUS_NOT_FOUND",
    "STATUS_NO_SUPPORT",
    "STATUS_OK",
    "STATUS_OUTSIDE",
    "STATUS_PARTIAL",
    "SupportEstimate",
    "box_iou",
    "clip_box",
    "estimate_organs",
    "vote",
    "wall_distance",
    "weighted_median",
]
