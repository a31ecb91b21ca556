"""The embedding localizer: supports' organs carried into the target by anatomical embeddings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from uae_ray.matching import embed_image, Embedder, EmbeddingMaps, find_points, fit_points
from uae_ray.matching.nn import MatcherCache
from uae_ray.matching.result import MatchResult
from uae_ray.tasks.localize.boxes import (
    DEFAULT_CUT_POLICY,
    DEFAULT_EMBEDDING_MODE,
    DEFAULT_WINDOW_MM,
    EMBEDDING_MODES,
    OrganBox,
    STATUS_NO_SUPPORT,
    SupportEstimate,
)
from uae_ray.tasks.localize.vote import vote
from uae_ray.tasks.support import extreme_points, image_box, partial_supports, slab_thickness, Support

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingLocalizerConfig:
    """Parameters of the embedding localizer.

    Attributes:
        mode: ``"extremes"``: the six extreme points matched by fixed-point matching (UAE).
            ``"transfer"``: the centroid, the six extreme points and ``n_organ_points`` organ
            voxels matched by nearest neighbour; the support's organ is carried over by the
            median displacement (``fit="translation"``) or a robust rigid / affine fit
            (:func:`~uae_ray.matching.fit_points`), and its extreme points taken there. Organ
            voxels carried into the target's view are matched back: when too few land on the
            organ in the support (or none is in view), the organ is not found.
        fit: ``transfer``: ``"translation"``, ``"rigid"`` or ``"affine"``.
        n_organ_points: ``transfer``: organ voxels sampled per organ.
        round_trip_mm: ``transfer``: a query whose match, matched back, returns within this
            distance is round-trip consistent; the displacement is the median over those (over
            all when fewer than 5).
        n_verify: ``transfer``: organ voxels carried into the target's view and matched back to
            check that they land on the organ (the ``found`` flag).
        verify_radius_mm: a match back "lands on the organ" within this distance of it.
        min_verified: ``found`` when at least this share of the checked points lands on it.
        max_mapped_voxels: ``transfer`` with a rigid/affine fit: organ voxels mapped.
        cut_policy: see :func:`vote`.
        seed: sampling seed (results are deterministic for a given seed).
        window_mm: ``transfer``: each nearest-neighbour match searched within this half-size
            (mm) around the global level's best voxel (coarse to fine) instead of over the whole
            scan; 0 or ``None``: whole-scan searches.
    """

    mode: str = DEFAULT_EMBEDDING_MODE
    fit: str = "translation"
    n_organ_points: int = 64
    round_trip_mm: float = 16.0
    n_verify: int = 32
    verify_radius_mm: float = 8.0
    min_verified: float = 0.25
    max_mapped_voxels: int = 20000
    cut_policy: str = DEFAULT_CUT_POLICY
    seed: int = 0
    window_mm: float | None = DEFAULT_WINDOW_MM


def _nn(template: EmbeddingMaps, points: np.ndarray, target: EmbeddingMaps, window_mm: float | None,
        matchers: MatcherCache) -> MatchResult:
    """Nearest-neighbour matches of template points in the target: over the whole target, or
    (``window_mm``) in a window around the global level's best voxel."""
    if not window_mm:
        return find_points(template, points, target, "nn")
    matcher = matchers(target)
    guess = matcher.predict_global(template, points)
    window = max(window_mm, 1.5 * max(target.global_grid.spacing))
    xyz, scores = matcher.predict(template, points, guess, window)
    return MatchResult(xyz, scores, np.ones(len(xyz), dtype=bool), np.full(len(xyz), np.nan))


def _sample_rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def estimate_organs(
    support: Support,
    support_maps: EmbeddingMaps,
    organs: Sequence[str],
    target_maps: EmbeddingMaps,
    config: EmbeddingLocalizerConfig = EmbeddingLocalizerConfig(),
    matchers: MatcherCache | None = None,
) -> dict[str, SupportEstimate]:
    """One support's estimates of several organs' extreme points in the target.

    All the organs' query points go through the matcher in one batch (its set-up is shared).
    Organs the support does not have are left out of the result. ``matchers`` keeps the
    windowed searches' matchers across calls (a new cache per call without it).
    """
    matchers = matchers if matchers is not None else MatcherCache()
    if config.mode not in EMBEDDING_MODES:
        raise ValueError(f"unknown embedding mode {config.mode!r}; expected one of {', '.join(EMBEDDING_MODES)}")
    geos = [g for g in (support.organ(o) for o in organs) if g is not None]
    if not geos:
        return {}
    out: dict[str, SupportEstimate] = {}
    if config.mode == "extremes":
        r = find_points(support_maps, np.concatenate([g.extremes for g in geos]), target_maps, "fixed-point")
        for i, g in enumerate(geos):
            sl = slice(6 * i, 6 * i + 6)
            out[g.name] = SupportEstimate(support.name, r.points[sl], np.asarray(r.scores[sl], dtype=np.float64),
                                          np.asarray(r.found[sl], dtype=bool), g.cut)
        return out
    queries, spans, voxels = [], [], []
    n = 0
    for g in geos:
        rng = np.random.default_rng([config.seed, g.label])
        vox = support.organ_points(g.name)
        voxels.append((vox, rng))
        pts = np.concatenate([g.centroid[None], g.extremes, vox[_sample_rows(len(vox), config.n_organ_points, rng)]])
        spans.append(slice(n, n + len(pts)))
        n += len(pts)
        queries.append(pts)
    src_all = np.concatenate(queries)
    fwd = _nn(support_maps, src_all, target_maps, config.window_mm, matchers)
    back = _nn(target_maps, fwd.points, support_maps, config.window_mm, matchers)
    consistent = np.linalg.norm(back.points - src_all, axis=1) <= config.round_trip_mm
    slab = slab_thickness(support.labels)
    results = []
    for g, sl, (vox, rng) in zip(geos, spans, voxels):
        src, dst, ok = src_all[sl], fwd.points[sl], consistent[sl]
        use = ok if ok.sum() >= 5 else np.ones(len(src), dtype=bool)
        if config.fit == "translation":
            shift = np.median(dst[use] - src[use], axis=0)
            ext, mapped = g.extremes + shift, lambda p, t=shift: p + t
        else:
            pmap = fit_points(src[use], dst[use], kind=config.fit, scale_mm=8.0)
            ext = extreme_points(pmap(vox[_sample_rows(len(vox), config.max_mapped_voxels, rng)]), slab)
            mapped = pmap
        score = float(np.mean(fwd.scores[sl][use]))
        # Check: organ voxels carried into the target's view, matched back, must land on the organ.
        moved = mapped(vox[_sample_rows(len(vox), 4 * config.n_verify, rng)])
        inside = target_maps.in_view(moved)
        results.append((g, ext, score, moved[inside][: config.n_verify]))
    checks = [r[3] for r in results]
    verified = np.zeros(0)
    if sum(len(c) for c in checks):
        landing = _nn(target_maps, np.concatenate(checks), support_maps, config.window_mm, matchers).points
        verified = _on_label(support, landing, [r[0].label for r in results for _ in range(len(r[3]))],
                             config.verify_radius_mm)
    start = 0
    for g, ext, score, check in results:
        hits = verified[start : start + len(check)]
        start += len(check)
        share = float(hits.mean()) if len(check) else 0.0
        found = bool(len(check) and share >= config.min_verified)
        chance = g.volume_ml / max(float(np.prod(image_box(support.image)[3:] - image_box(support.image)[:3])) / 1000.0, 1e-6)
        out[g.name] = SupportEstimate(support.name, ext, np.full(6, score), np.full(6, found), g.cut, share, chance)
    return out


def _on_label(support: Support, points: np.ndarray, labels: Sequence[int], radius_mm: float) -> np.ndarray:
    """True where the support's label map has the given label within ``radius_mm`` of the point."""
    from uae_ray.volume import Grid

    arr = sitk.GetArrayViewFromImage(support.labels)  # z, y, x
    grid = Grid.from_image(support.labels)
    r = np.ceil(radius_mm / np.asarray(grid.spacing)).astype(int)  # x, y, z
    idx = np.rint(grid.world_to_index(points)).astype(int)
    out = np.zeros(len(points), dtype=bool)
    for i, (p, label) in enumerate(zip(idx, labels)):
        lo = np.maximum(p - r, 0)
        hi = np.minimum(p + r + 1, np.asarray(arr.shape[::-1]))
        if np.any(hi <= lo):
            continue
        out[i] = bool((arr[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] == label).any())
    return out


class EmbeddingLocalizer:
    """Organ boxes from anatomical embeddings (embeds every support once, predictor style).

    Args:
        embedder: any :class:`~uae_ray.matching.Embedder`.
        supports: the loaded support scans.
        config: :class:`EmbeddingLocalizerConfig`.
        support_maps: optional precomputed maps, one per support (same order).
        matchers: optional :class:`~uae_ray.matching.nn.MatcherCache` shared with other
            localizers of the same supports (SPL's organ and part localizations).
    """

    method = "embedding"

    def __init__(
        self,
        embedder: Embedder,
        supports: Sequence[Support],
        config: EmbeddingLocalizerConfig = EmbeddingLocalizerConfig(),
        support_maps: Sequence[EmbeddingMaps] | None = None,
        matchers: MatcherCache | None = None,
    ) -> None:
        self.embedder = embedder
        self.supports = list(supports)
        self.config = config
        # embedded on first use, so a support without any requested organ costs nothing
        self.support_maps: list[EmbeddingMaps | None] = (
            list(support_maps) if support_maps is not None else [None] * len(self.supports)
        )
        self._matchers = matchers if matchers is not None else MatcherCache()  # the target and the last support

    def _maps(self, i: int) -> EmbeddingMaps:
        if self.support_maps[i] is None:
            s = self.supports[i]
            self.support_maps[i] = embed_image(s.image, self.embedder, s.modality)
        return self.support_maps[i]  # type: ignore[return-value]

    @property
    def model_version(self) -> str:
        return self.embedder.version

    def localize(
        self, target: sitk.Image, organs: Sequence[str], modality: str | None = None
    ) -> list[OrganBox]:
        """Boxes of ``organs`` in ``target`` (one :class:`OrganBox` per organ, in order)."""
        target_maps = embed_image(target, self.embedder, modality)
        return self.localize_maps(target_maps, image_box(target), organs)

    def localize_maps(self, target_maps: EmbeddingMaps, fov: np.ndarray, organs: Sequence[str]) -> list[OrganBox]:
        """As :meth:`localize`, from the target's embedding maps and field-of-view box."""
        per_support = []
        for i, support in enumerate(self.supports):
            if not any(support.has(o) for o in organs):
                continue
            t0 = time.perf_counter()
            est = estimate_organs(support, self._maps(i), organs, target_maps, self.config, self._matchers)
            per_support.append((est, (time.perf_counter() - t0) / max(len(est), 1)))
            logger.info("support %d/%d (%s): %d structures carried in %.1f s", i + 1, len(self.supports),
                        support.spec.image, len(est), time.perf_counter() - t0)
        for _, line in partial_supports(self.supports, organs):
            logger.warning("%s", line)
        out = []
        for organ in organs:
            estimates = [est[organ] for est, _ in per_support if organ in est]
            seconds = sum(dt for est, dt in per_support if organ in est)
            if not estimates:
                reasons = [s.missing_reason(organ) for s in self.supports]
                box = OrganBox.empty(organ, STATUS_NO_SUPPORT,
                                     f"{organ}: no support scan has this organ ({'; '.join(reasons)})", self.method)
            else:
                box = vote(organ, estimates, fov, self.method, self.config.cut_policy)
            box.seconds = seconds
            out.append(box)
        return out
