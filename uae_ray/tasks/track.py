"""Lesion tracking: each baseline lesion's centre found in a follow-up scan of the same patient.

Core logic only (no Ray, Triton or S3): give it an :class:`~uae_ray.matching.Embedder`, or
embedding maps.

Every lesion's centre is matched from the baseline into the follow-up with the chosen method
(``fixed-point`` by default, see :func:`~uae_ray.matching.find_points`). Where the lesion's
extent is known (a ``radius_mm``, or a mask) and :attr:`TrackConfig.extent` is on, the lesion
votes (:func:`vote`):

1. Vote points: the centre plus six points on the axes at ``+-rho`` from it,
   ``rho = min(vote_fraction * radius, max_offset_mm)`` (a lesion with
   ``rho < min_offset_mm`` votes with its centre alone); for a mask, the centre plus
   ``mask_votes`` mask voxels spread out by farthest-point sampling among those within ``rho``
   of the centroid. Vote points outside the baseline are dropped.
2. Every vote point ``p_i = c + o_i`` is matched (all in one batch) to ``m_i``; its vote for
   the centre is ``m_i - o_i`` (the lesion's neighbourhood moves by about one translation;
   symmetric pairs of points cancel a local rotation, scaling or growth to first order).
3. The matches of the points the matcher found (all of them if none was found) are combined
   by a robust fit (Tukey-biweight IRLS, :func:`~uae_ray.matching.fit_points`, started from
   the per-axis median translation): an affine map of the lesion's neighbourhood when at
   least five spread-out points were found (it absorbs a local rotation, scaling or the
   lesion's growth exactly), else a translation (a robust mean of the votes ``m_i - o_i``).
   The result is the fitted map of the centre.
4. A vote *agrees* when it was found and its match lies within ``agree_mm`` of the fitted
   map of its point. The lesion is ``found`` when at least ``min_vote_fraction`` of its
   votes agree and the result lies in the follow-up's field of view; ``score`` is the mean
   score of the agreeing votes (of all votes when none agrees) and ``consistency`` the
   fraction that agree.

With one vote point (no extent, or a lesion too small for ``min_offset_mm``) the result is
the method's own match of the centre. A lesion whose centre lies outside the baseline gives a
:class:`~uae_ray.tasks.points_io.Track` with ``error`` set (NaN coordinates, ``found=False``),
not an exception. World points are (N, 3) arrays, x, y, z (LPS, mm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from uae_ray.matching import (
    DEFAULT_METHOD,
    EmbeddingMaps,
    Embedder,
    FixedPointConfig,
    MatchResult,
    embed_image,
    find_points,
    fit_points,
    well_spread,
)
from uae_ray.tasks.points_io import LesionPoints, Track
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)

#: Mask points kept per lesion by :func:`lesions_from_mask` (a deterministic subsample).
MAX_MASK_POINTS = 4000


@dataclass(frozen=True)
class TrackConfig:
    """Parameters of lesion tracking (see the module docstring).

    Attributes:
        extent: Vote with points spread over the lesion where a radius or mask is given.
        vote_fraction: Vote points at this fraction of the radius from the centre.
        min_offset_mm: Below this offset the lesion votes with its centre alone.
        max_offset_mm: Offsets are capped here (far points share less of the lesion's motion).
        mask_votes: Mask points per lesion (besides the centre) for a lesion given by a mask.
        min_vote_fraction: Share of the votes that must agree for ``found=True``.
        agree_mm: A found vote within this distance of the robust mean agrees.
        fixed_point: Parameters of fixed-point matching.
    """

    extent: bool = True
    vote_fraction: float = 0.5
    min_offset_mm: float = 2.0
    max_offset_mm: float = 20.0
    mask_votes: int = 6
    min_vote_fraction: float = 0.5
    agree_mm: float = 8.0
    fixed_point: FixedPointConfig = field(default_factory=FixedPointConfig)


def _farthest_points(points: np.ndarray, k: int, start: np.ndarray) -> np.ndarray:
    """``k`` of ``points`` spread out by farthest-point sampling, starting far from ``start``."""
    chosen: list[int] = []
    dist = np.linalg.norm(points - start, axis=1)
    for _ in range(min(k, len(points))):
        j = int(np.argmax(dist))
        if dist[j] <= 0.0:
            break
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(points - points[j], axis=1))
    return points[chosen]


def vote_offsets(lesions: LesionPoints, i: int, config: TrackConfig) -> np.ndarray:
    """(K, 3) offsets (mm) of lesion ``i``'s vote points from its centre, the zero offset first."""
    zero = np.zeros((1, 3))
    radius = float(lesions.radius_mm[i])
    if not config.extent or not np.isfinite(radius):
        return zero
    rho = min(config.vote_fraction * radius, config.max_offset_mm)
    if rho < config.min_offset_mm:
        return zero
    centre = lesions.xyz[i]
    extent = lesions.extent_of(i)
    if extent is not None and len(extent):
        near = extent[np.linalg.norm(extent - centre, axis=1) <= rho]
        picked = _farthest_points(near, config.mask_votes, centre)
        if len(picked):
            return np.concatenate([zero, picked - centre])
    axes = np.concatenate([np.eye(3), -np.eye(3)]) * rho
    return np.concatenate([zero, axes])


def vote(centre: np.ndarray, offsets: np.ndarray, matched: MatchResult, config: TrackConfig) -> dict[str, float]:
    """Combines the matches of one lesion's vote points (steps 3-4 of the module docstring).

    Args:
        centre: (3,) the lesion's baseline centre.
        offsets: (K, 3) offsets of the vote points (K >= 2).
        matched: The K matches (found, scores).
        config: Tracking parameters.

    Returns:
        ``{"xyz": (3,), "score", "consistency", "votes", "agree": (K,) bool}`` (no FOV check).
    """
    found = np.asarray(matched.found, dtype=bool)
    use = found if found.any() else np.ones(len(found), dtype=bool)
    src = centre + offsets
    spread = 0.25 * float(np.linalg.norm(offsets, axis=1).max())
    kind = "affine" if use.sum() >= 5 and well_spread(src[use], spread) else "translation"
    fit = fit_points(src[use], matched.points[use], kind=kind, scale_mm=config.fixed_point.tolerance_mm)
    xyz = fit(centre)[0]
    agree = found & (np.linalg.norm(fit(src) - matched.points, axis=1) <= config.agree_mm)
    scores = np.asarray(matched.scores, dtype=np.float64)
    score = float(scores[agree].mean()) if agree.any() else float(scores.mean())
    return {"xyz": xyz, "score": score, "consistency": float(agree.mean()), "votes": int(agree.sum()), "agree": agree}


def _error_track(lesions: LesionPoints, i: int, message: str) -> Track:
    c = lesions.xyz[i]
    nan = float("nan")
    return Track(lesions.names[i], nan, nan, nan, nan, False, float(c[0]), float(c[1]), float(c[2]),
                 float(lesions.radius_mm[i]), nan, 0, message)


def track_lesions(
    baseline: EmbeddingMaps,
    lesions: LesionPoints,
    followup: EmbeddingMaps,
    method: str = DEFAULT_METHOD,
    config: TrackConfig | None = None,
    baseline_grid: Grid | None = None,
) -> list[Track]:
    """Finds every baseline lesion in the follow-up (see the module docstring).

    Args:
        baseline: Embedding maps of the baseline scan.
        lesions: The baseline's lesions (centre, radius, optional mask points).
        followup: Embedding maps of the follow-up scan (same model).
        method: ``"fixed-point"`` or ``"nn"``.
        config: Tracking parameters.
        baseline_grid: The baseline image's grid, for an exact "inside the baseline" check;
            without it the baseline maps' field-of-view mask (4 mm voxels) decides.

    Returns:
        One :class:`Track` per lesion, in input order.

    Raises:
        ValueError: The maps come from different models, or an unknown method.
    """
    cfg = config or TrackConfig()
    if baseline.model_version != followup.model_version:
        raise ValueError(
            f"follow-up embeddings of model {followup.model_version} cannot be matched against a "
            f"baseline embedded with {baseline.model_version}"
        )
    n = len(lesions)
    xyz = lesions.xyz.reshape(-1, 3)
    inside = baseline_grid.contains(xyz) if baseline_grid is not None else baseline.in_view(xyz)
    queries: list[np.ndarray] = []
    offsets: dict[int, np.ndarray] = {}
    for i in range(n):
        if not inside[i]:
            continue
        offs = vote_offsets(lesions, i, cfg)
        pts = xyz[i] + offs
        keep = (baseline_grid.contains(pts) if baseline_grid is not None else baseline.in_view(pts))
        keep[0] = True
        offsets[i] = offs[keep]
        queries.append(pts[keep])
    result = (
        find_points(baseline, np.concatenate(queries), followup, method, cfg.fixed_point)
        if queries else MatchResult(np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool), np.zeros(0))
    )
    tracks: list[Track] = []
    start = 0
    for i in range(n):
        name, c, radius = lesions.names[i], xyz[i], float(lesions.radius_mm[i])
        if i not in offsets:
            where = ", ".join(f"{v:.1f}" for v in c)
            tracks.append(_error_track(lesions, i, f"lesion {name}: centre ({where}) is outside the baseline image"))
            continue
        offs = offsets[i]
        k = len(offs)
        sub = MatchResult(result.points[start:start + k], result.scores[start:start + k],
                          result.found[start:start + k], result.consistency[start:start + k])
        start += k
        if k == 1:
            p, score, found = sub.points[0], float(sub.scores[0]), bool(sub.found[0])
            consistency = float(sub.consistency[0])
            n_votes = int(found)
        else:
            v = vote(c, offs, sub, cfg)
            p, score, consistency, n_votes = v["xyz"], v["score"], v["consistency"], v["votes"]
            found = bool(consistency >= cfg.min_vote_fraction and followup.in_view(p)[0])
        tracks.append(Track(name, float(p[0]), float(p[1]), float(p[2]), score, found,
                            float(c[0]), float(c[1]), float(c[2]), radius, consistency, n_votes))
    return tracks


class LesionTracker:
    """Embeds the baseline once, then tracks its lesions into follow-up scans.

    Args:
        embedder: Any :class:`Embedder` (in-process torch or Triton); ``None`` with
            :meth:`from_maps`.
        baseline: The baseline image.
        lesions: The baseline's lesions (world LPS mm).
        modality: ``"CT"`` or ``"MR"`` of the baseline; ``None`` detects it.
        method: ``"fixed-point"`` (default) or ``"nn"``.
        config: :class:`TrackConfig`.
    """

    def __init__(
        self,
        embedder: Embedder | None,
        baseline: sitk.Image | None,
        lesions: LesionPoints,
        modality: str | None = None,
        method: str = DEFAULT_METHOD,
        config: TrackConfig | None = None,
    ) -> None:
        self.embedder = embedder
        self.lesions = lesions
        self.method = method
        self.config = config or TrackConfig()
        self.baseline_grid: Grid | None = None
        self.baseline_maps: EmbeddingMaps | None = None
        if baseline is not None:
            if embedder is None:
                raise ValueError("LesionTracker needs an embedder to embed the baseline image")
            self.baseline_grid = Grid.from_image(baseline)
            self.baseline_maps = embed_image(baseline, embedder, modality)

    @classmethod
    def from_maps(
        cls,
        baseline_maps: EmbeddingMaps,
        lesions: LesionPoints,
        method: str = DEFAULT_METHOD,
        config: TrackConfig | None = None,
        baseline_grid: Grid | None = None,
        embedder: Embedder | None = None,
    ) -> LesionTracker:
        """A tracker over precomputed baseline maps (e.g. stored embeddings of a cohort)."""
        tracker = cls(embedder, None, lesions, method=method, config=config)
        tracker.baseline_maps = baseline_maps
        tracker.baseline_grid = baseline_grid
        return tracker

    @property
    def model_version(self) -> str:
        if self.baseline_maps is None:
            raise RuntimeError("LesionTracker has no baseline maps; construct it with a baseline or from_maps()")
        return self.baseline_maps.model_version

    def track_maps(self, followup: EmbeddingMaps) -> list[Track]:
        """Tracks the lesions into precomputed follow-up maps."""
        if self.baseline_maps is None:
            raise RuntimeError("LesionTracker has no baseline maps; construct it with a baseline or from_maps()")
        return track_lesions(self.baseline_maps, self.lesions, followup, self.method, self.config, self.baseline_grid)

    def track(self, followup: sitk.Image, modality: str | None = None) -> list[Track]:
        """Embeds the follow-up and tracks the lesions into it."""
        if self.embedder is None:
            raise RuntimeError("LesionTracker.track needs an embedder; use track_maps with precomputed maps")
        return self.track_maps(embed_image(followup, self.embedder, modality))


def lesions_from_mask(
    mask: sitk.Image, names: dict[int, str] | None = None, source: str = "lesion mask", seed: int = 0
) -> LesionPoints:
    """One lesion per non-zero label of a label map on the baseline.

    Centre: the centroid of the label's voxels (world); radius: that of a sphere of the same
    volume; extent: up to :data:`MAX_MASK_POINTS` of its voxel centres (a seeded subsample).

    Args:
        mask: Integer label map (0 = background), any grid in the baseline's world space.
        names: ``{label value: name}``; missing labels are named ``lesion_<value>``.
        source: For error messages (the file name).
        seed: Seed of the subsample.

    Raises:
        ValueError: The mask holds no lesion (all zero).
    """
    arr = sitk.GetArrayViewFromImage(mask)  # z, y, x
    grid = Grid.from_image(mask)
    voxel_mm3 = float(np.prod(grid.spacing)) * abs(float(np.linalg.det(grid.direction_matrix)))
    values = [int(v) for v in np.unique(arr) if v != 0]
    if not values:
        raise ValueError(f"{source}: the lesion mask has no non-zero label")
    rng = np.random.default_rng(seed)
    names = names or {}
    out_names, centres, radii, extents = [], [], [], []
    for value in values:
        zyx = np.argwhere(arr == value)
        world = grid.index_to_world(zyx[:, ::-1].astype(np.float64))
        centres.append(world.mean(axis=0))
        radii.append(float((3.0 * len(zyx) * voxel_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)))
        if len(world) > MAX_MASK_POINTS:
            world = world[np.sort(rng.choice(len(world), MAX_MASK_POINTS, replace=False))]
        extents.append(world)
        out_names.append(names.get(value, f"lesion_{value}"))
    if len(set(out_names)) != len(out_names):
        raise ValueError(f"{source}: two labels share a name")
    return LesionPoints(tuple(out_names), np.asarray(centres), np.asarray(radii), tuple(extents))


__all__ = [
    "LesionTracker",
    "TrackConfig",
    "lesions_from_mask",
    "track_lesions",
    "vote",
    "vote_offsets",
]
