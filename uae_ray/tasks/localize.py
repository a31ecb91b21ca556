"""Few-shot organ localization: k annotated support scans -> a 3D box per organ in a target.

Two localizers, one output (:class:`OrganBox`):

* ``embedding`` (:class:`EmbeddingLocalizer`): the anatomical embeddings of
  :mod:`uae_ray.matching`. Per support, the organ is carried into the target
  (:func:`estimate_organs`, two modes: ``"extremes"`` matches the organ's six extreme points by
  fixed-point matching; ``"transfer"`` matches points spread over the organ and carries the
  support's organ over by their median displacement, or a robust rigid / affine fit). The per-support
  estimates of the six extreme points are then voted over the k supports (:func:`vote`).
* ``medlam`` (:class:`MedLAMLocalizer`): the MedLAM network (:mod:`uae_ray.models.medlam`):
  relative-position regression (one jump from the scan centre towards each extreme point of the
  support), then one multi-scale-similarity refinement in a 64^3 crop.

Box = per-axis min/max of the six voted points, clipped to the target's field of view (the
box of its voxel centres). Geometry: world points are LPS mm arrays (N, 3), x, y, z; a box is
``(xmin, ymin, zmin, xmax, ymax, zmax)`` (the boxes CSV contract). Core logic only: no Ray,
Triton or S3 here (give it an :class:`~uae_ray.matching.Embedder`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from uae_ray.matching import EmbeddingMaps, Embedder, embed_image, find_points, fit_points
from uae_ray.tasks.support import (
    EXTREME_NAMES,
    Support,
    box_of_points,
    extreme_points,
    image_box,
    partial_supports,
    slab_thickness,
)

logger = logging.getLogger(__name__)

#: Localizers of ``uae-ray localize --method``.
LOCALIZE_METHODS = ("embedding", "medlam")
#: Per-support modes of the embedding localizer.
EMBEDDING_MODES = ("extremes", "transfer")
#: Defaults of ``uae-ray localize`` (chosen by ``uae-ray bench localization``, see README).
DEFAULT_LOCALIZE_METHOD = "embedding"
DEFAULT_EMBEDDING_MODE = "transfer"
#: What a side that every support's organ is cut on becomes (see :func:`vote`). ``keep``: the
#: segmentation benchmark's SPL Dice 0.34 vs 0.31 with ``extend`` (README).
CUT_POLICIES = ("keep", "extend")
DEFAULT_CUT_POLICY = "keep"

#: Row statuses of the boxes CSV (``status`` column).
STATUS_OK = "ok"  # box inside the target's field of view
STATUS_PARTIAL = "partial_fov"  # box clipped to the field of view (organ partly outside)
STATUS_OUTSIDE = "outside_fov"  # the organ is not in the target's field of view
STATUS_NOT_FOUND = "not_found"  # no estimate passed its check: the organ is likely not in view
STATUS_NO_SUPPORT = "no_support"  # no support scan has this organ
STATUSES = (STATUS_OK, STATUS_PARTIAL, STATUS_OUTSIDE, STATUS_NOT_FOUND, STATUS_NO_SUPPORT)


@dataclass
class SupportEstimate:
    """One support's estimate of an organ's six extreme points in the target.

    Attributes:
        support: the support's name (``IMAGE:LABELS``).
        points: (6, 3) estimated extreme points in the target (``EXTREME_NAMES`` order), LPS mm.
        scores: (6,) similarity of each estimate (higher is better).
        found: (6,) bool: False where the matcher abstained (likely outside the target's view).
        cut: (6,) bool: the support's organ touches its own image border on that side, so the
            support's extreme point there is its field of view's edge, not the organ's.
        verified: ``transfer`` mode: share of the checked points that matched back onto the
            organ (NaN otherwise).
        chance: the share a random point of the support's view would give (organ volume over
            the view's volume, NaN when not computed).
    """

    support: str
    points: np.ndarray
    scores: np.ndarray
    found: np.ndarray
    cut: np.ndarray
    verified: float = float("nan")
    chance: float = float("nan")


@dataclass
class OrganBox:
    """A localized organ (one row of the boxes CSV).

    Attributes:
        name: organ name.
        box: (6,) ``xmin, ymin, zmin, xmax, ymax, zmax`` clipped to the target's field of view
            (NaN when there is no estimate).
        raw_box: (6,) the box before clipping.
        points: (6, 3) voted extreme points (``EXTREME_NAMES`` order).
        score: mean similarity of the estimates used.
        found: at least half of the six points were found (not abstained on) by some support.
        status: one of :data:`STATUSES`.
        message: one line explaining a status other than ok ("" otherwise).
        method: the localizer (``embedding``, ``medlam``).
        n_supports: supports that had the organ.
        seconds: wall time spent on this organ (matching and voting; embedding excluded).
    """

    name: str
    box: np.ndarray
    raw_box: np.ndarray
    points: np.ndarray
    score: float
    found: bool
    status: str
    message: str = ""
    method: str = "embedding"
    n_supports: int = 0
    seconds: float = 0.0

    @classmethod
    def empty(cls, name: str, status: str, message: str, method: str) -> "OrganBox":
        nan6 = np.full(6, np.nan)
        return cls(name, nan6, nan6.copy(), np.full((6, 3), np.nan), float("nan"), False, status, message, method)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes ``(xmin, ymin, zmin, xmax, ymax, zmax)`` (0 when the union is empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    inter = np.prod(np.clip(np.minimum(a[3:], b[3:]) - np.maximum(a[:3], b[:3]), 0.0, None))
    va = np.prod(np.clip(a[3:] - a[:3], 0.0, None))
    vb = np.prod(np.clip(b[3:] - b[:3], 0.0, None))
    union = va + vb - inter
    return float(inter / union) if union > 0 else 0.0


def wall_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the six faces of ``|a - b|`` (mm)."""
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# -- voting -------------------------------------------------------------------------------------


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median of 1D values (lower median on ties)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.clip(np.asarray(weights, dtype=np.float64), 1e-6, None)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    return float(v[np.searchsorted(cw, 0.5 * cw[-1])])


def clip_box(box: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """Clips a box to a field-of-view box.

    Returns:
        ``(clipped, was_clipped, empty)``; ``empty`` when the box lies wholly outside.
    """
    lo = np.maximum(box[:3], fov[:3])
    hi = np.minimum(box[3:], fov[3:])
    empty = bool(np.any(lo > hi))
    clipped = np.concatenate([lo, hi])
    tol = 1e-6
    was = bool(np.any(box[:3] < fov[:3] - tol) or np.any(box[3:] > fov[3:] + tol))
    return clipped, was, empty


def vote(
    name: str,
    estimates: Sequence[SupportEstimate],
    fov: np.ndarray,
    method: str = "embedding",
    cut_policy: str = DEFAULT_CUT_POLICY,
) -> OrganBox:
    """Votes the supports' estimates into one box.

    Per extreme point: the per-coordinate weighted median (weights: scores) over the supports
    that found it (all supports when none did); a support whose organ is cut by its own field of
    view on that side is left out when another support is not. Box = per-axis min/max of the six
    voted points, clipped to ``fov`` (the target's box of voxel centres).

    Where *every* support's organ is cut on a side, the support says only that the organ goes
    on past that point: ``cut_policy="keep"`` (the default) keeps the estimate, ``"extend"``
    moves that side of the box to the target's field-of-view edge.

    Args:
        name: organ name.
        estimates: one per support that has the organ (at least one).
        fov: (6,) the target's field-of-view box.
        method: recorded in the result.
        cut_policy: one of :data:`CUT_POLICIES`.
    """
    if not estimates:
        return OrganBox.empty(name, STATUS_NO_SUPPORT, f"{name}: no support scan has this organ", method)
    pts = np.stack([e.points for e in estimates])  # (k, 6, 3)
    scores = np.stack([e.scores for e in estimates]).astype(np.float64)  # (k, 6)
    found = np.stack([e.found for e in estimates])  # (k, 6)
    cut = np.stack([e.cut for e in estimates])
    voted = np.zeros((6, 3))
    used_scores = []
    for j in range(6):
        use = found[:, j].copy() if found[:, j].any() else np.ones(len(estimates), dtype=bool)
        if (use & ~cut[:, j]).any():
            use &= ~cut[:, j]
        w = np.clip(scores[use, j], 0.0, None) + 1e-3
        voted[j] = [weighted_median(pts[use, j, c], w) for c in range(3)]
        used_scores.append(scores[use, j].mean())
    raw = box_of_points(voted)
    if cut_policy not in CUT_POLICIES:
        raise ValueError(f"unknown cut policy {cut_policy!r}; expected one of {', '.join(CUT_POLICIES)}")
    if cut_policy == "extend":
        for j in np.flatnonzero(cut.all(axis=0)):  # EXTREME_NAMES order: xmin, xmax, ymin, ...
            axis, high = divmod(int(j), 2)
            col = axis + 3 * high
            raw[col] = fov[col]
    box, clipped, empty = clip_box(raw, fov)
    n_found = int(found.any(axis=0).sum())
    score = float(np.mean(used_scores))
    if empty:
        status = STATUS_OUTSIDE
        message = f"{name}: the localized box lies outside the target's field of view"
    elif n_found == 0:
        status = STATUS_NOT_FOUND
        message = f"{name}: not found by any support (the organ is likely outside the target's field of view)"
    elif clipped:
        status, message = STATUS_PARTIAL, f"{name}: box clipped to the target's field of view"
    else:
        status, message = STATUS_OK, ""
    all_cut = [EXTREME_NAMES[j] for j in np.flatnonzero(cut.all(axis=0))]
    if all_cut and not empty:
        note = (f"every support's {name} is cut by its field of view at {', '.join(all_cut)}: "
                + ("those sides moved to the target's view edge" if cut_policy == "extend"
                   else "the box keeps the supports' extent there; the organ may go on"))
        message = f"{message}; {note}" if message else f"{name}: {note}"
    return OrganBox(
        name=name,
        box=box if not empty else raw,
        raw_box=raw,
        points=voted,
        score=score,
        found=n_found >= 3 and not empty,
        status=status,
        message=message,
        method=method,
        n_supports=len(estimates),
    )


# -- embedding localizer ------------------------------------------------------------------------


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


def _sample_rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def estimate_organs(
    support: Support,
    support_maps: EmbeddingMaps,
    organs: Sequence[str],
    target_maps: EmbeddingMaps,
    config: EmbeddingLocalizerConfig = EmbeddingLocalizerConfig(),
) -> dict[str, SupportEstimate]:
    """One support's estimates of several organs' extreme points in the target.

    All the organs' query points go through the matcher in one batch (its set-up is shared).
    Organs the support does not have are left out of the result.
    """
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
    fwd = find_points(support_maps, src_all, target_maps, "nn")
    back = find_points(target_maps, fwd.points, support_maps, "nn")
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
        landing = find_points(target_maps, np.concatenate(checks), support_maps, "nn").points
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
    """

    method = "embedding"

    def __init__(
        self,
        embedder: Embedder,
        supports: Sequence[Support],
        config: EmbeddingLocalizerConfig = EmbeddingLocalizerConfig(),
        support_maps: Sequence[EmbeddingMaps] | None = None,
    ) -> None:
        self.embedder = embedder
        self.supports = list(supports)
        self.config = config
        # embedded on first use, so a support without any requested organ costs nothing
        self.support_maps: list[EmbeddingMaps | None] = (
            list(support_maps) if support_maps is not None else [None] * len(self.supports)
        )

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
            est = estimate_organs(support, self._maps(i), organs, target_maps, self.config)
            per_support.append((est, (time.perf_counter() - t0) / max(len(est), 1)))
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


# -- MedLAM localizer ---------------------------------------------------------------------------


@dataclass
class MedLAMScan:
    """A scan prepared for MedLAM: 3 mm volume (identity direction) and its geometry.

    Attributes:
        volume: (1, Z, Y, X) float32 tensor, normalised, air = -1.
        valid: (1, Z, Y, X) float32 tensor, 1 inside the original field of view.
        grid: the 3 mm grid (``Grid``; identity direction).
        fov: (6,) the original image's box of voxel centres.
    """

    volume: "object"
    valid: "object"
    grid: "object"
    fov: np.ndarray

    @classmethod
    def prepare(cls, image: sitk.Image, modality: str, spacing_mm: float = 3.0) -> "MedLAMScan":
        import torch

        from uae_ray.volume import prepare_volume

        pv = prepare_volume(image, modality, spacing_mm=spacing_mm, pad_multiple=1)
        return cls(torch.from_numpy(pv.array)[None], torch.from_numpy(pv.valid.astype(np.float32))[None], pv.grid,
                   image_box(image))


@dataclass
class MedLAMSupportOrgan:
    """A support organ as MedLAM sees it: per extreme point the projection and the multi-scale
    features at the patch centre.

    Attributes:
        projections: (6, 3) ``p`` of the 64^3 patch centred on each extreme point.
        features: ``{stride: (6, C)}`` unit feature vectors at each patch centre.
        cut: (6,) bool, the support organ touches its own image border on that side.
    """

    projections: np.ndarray
    features: dict[int, np.ndarray]
    cut: np.ndarray


class MedLAMLocalizer:
    """Organ boxes with MedLAM (:mod:`uae_ray.models.medlam`).

    Per extreme point: the projections ``p`` of the k supports' patches at that point are
    averaged; one jump from the target's scan centre, ``x = c + scale * tanh(p_support - p_c)``;
    then one refinement: in the 64^3 crop (3 mm) around ``x``, the voxel of highest multi-scale
    similarity (cosine of the target's feature maps with the supports' features at the point,
    averaged over supports and the three scales, upsampled to 3 mm) within the field of view.
    Box = per-axis min/max of the six points, clipped to the field of view.

    Args:
        model: a :class:`~uae_ray.models.medlam.MedLAMNet` (eval mode).
        supports: the loaded support scans.
        cut_policy: see :func:`vote`.
    """

    method = "medlam"

    def __init__(self, model, supports: Sequence[Support], cut_policy: str = DEFAULT_CUT_POLICY) -> None:
        self.model = model.eval()
        self.supports = list(supports)
        self.cut_policy = cut_policy
        self._scans: dict[str, MedLAMScan] = {}
        self._organs: dict[tuple[str, str], MedLAMSupportOrgan] = {}

    @property
    def model_version(self) -> str:
        return str(getattr(self.model, "version", "medlam"))

    def _scan(self, support: Support) -> MedLAMScan:
        if support.name not in self._scans:
            self._scans[support.name] = MedLAMScan.prepare(support.image, support.modality,
                                                           self.model.config.input_spacing_mm)
        return self._scans[support.name]

    def _run(self, scan: MedLAMScan, world: np.ndarray, features: bool = True) -> dict:
        import torch

        from uae_ray.models.medlam import extract_patches

        idx = torch.from_numpy(scan.grid.world_to_index(np.asarray(world, dtype=np.float64).reshape(-1, 3)))
        x = extract_patches(scan.volume, idx, self.model.config.patch_size, pad_value=-1.0)
        with torch.inference_mode():
            out = self.model(x, features=features)
        out["valid"] = extract_patches(scan.valid, idx, self.model.config.patch_size, pad_value=0.0)[:, 0]
        out["centres"] = idx
        return out

    def support_organ(self, support: Support, organ: str) -> MedLAMSupportOrgan:
        """Projections and centre features of the support's six extreme points (cached)."""
        key = (support.name, organ)
        if key not in self._organs:
            import torch

            from uae_ray.models.medlam import patch_centre_index

            geo = support.organ(organ)
            if geo is None:
                raise KeyError(support.missing_reason(organ))
            out = self._run(self._scan(support), geo.extremes)
            c = patch_centre_index(self.model.config.patch_size)
            feats = {}
            for stride, f in out["features"].items():  # (6, C, m, m, m); centre at map position c / stride
                m = f.shape[-1]
                g = torch.full((f.shape[0], 1, 1, 1, 3), 2.0 * (c / int(stride)) / (m - 1) - 1.0, dtype=f.dtype)
                v = torch.nn.functional.grid_sample(f, g, mode="bilinear", align_corners=True).reshape(f.shape[0], -1)
                feats[int(stride)] = torch.nn.functional.normalize(v, dim=1).numpy()
            self._organs[key] = MedLAMSupportOrgan(out["projection"].numpy(), feats, geo.cut)
        return self._organs[key]

    def target_centre(self, scan: MedLAMScan) -> tuple[np.ndarray, np.ndarray]:
        """The scan centre (world) and its projection ``p_c``."""
        centre = 0.5 * (scan.fov[:3] + scan.fov[3:])
        return centre, self._run(scan, centre, features=False)["projection"].numpy()[0]

    def localize_organ(
        self, scan: MedLAMScan, organ: str, parts: Sequence[MedLAMSupportOrgan],
        centre: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> OrganBox:
        """One organ from the supports' :class:`MedLAMSupportOrgan` (at least one)."""
        import torch

        from uae_ray.models.ops import upsample_aligned

        t0 = time.perf_counter()
        c_world, p_c = centre if centre is not None else self.target_centre(scan)
        proj = np.stack([p.projections for p in parts])  # (k, 6, 3)
        cut = np.stack([p.cut for p in parts])  # (k, 6)
        use = ~cut
        use[:, ~use.any(axis=0)] = True  # every support is cut on that side: keep them all
        w = use[..., None].astype(np.float64)
        p_q = (proj * w).sum(axis=0) / w.sum(axis=0)  # (6, 3)
        scale = np.asarray(self.model.config.scale_mm, dtype=np.float64)
        jumped = c_world + scale * np.tanh(p_q - p_c)  # (6, 3)
        lo, hi = scan.fov[:3], scan.fov[3:]
        inside = np.all((jumped >= lo) & (jumped <= hi), axis=1)
        start = np.clip(jumped, lo, hi)
        out = self._run(scan, start)
        size = self.model.config.patch_size
        sim = torch.zeros((6, size, size, size))
        for stride, f in out["features"].items():  # (6, C, z, y, x)
            q = np.stack([p.features[int(stride)] for p in parts])  # (k, 6, C)
            q = (q * use[..., None]).sum(axis=0) / use.sum(axis=0)[:, None]
            s_map = torch.einsum("nczyx,nc->nzyx", f, torch.from_numpy(q).to(f.dtype))
            sim += upsample_aligned(s_map[:, None], int(stride), (size, size, size))[:, 0]
        sim /= len(out["features"])
        sim = sim.masked_fill(out["valid"] < 0.5, float("-inf"))
        best = sim.reshape(6, -1).argmax(dim=1)
        z, y, x = np.unravel_index(best.numpy(), (size, size, size))
        from uae_ray.models.medlam import patch_centre_index

        u = np.stack([x, y, z], axis=1).astype(np.float64) - patch_centre_index(size)
        refined_idx = out["centres"].numpy() + u
        refined = scan.grid.index_to_world(refined_idx)
        scores = sim.reshape(6, -1).max(dim=1).values.numpy().astype(np.float64)
        refined[~np.isfinite(scores)] = start[~np.isfinite(scores)]
        scores = np.nan_to_num(scores, neginf=0.0)
        est = SupportEstimate(f"{len(parts)} support(s)", refined, scores, inside, cut.all(axis=0))
        box = vote(organ, [est], scan.fov, self.method, self.cut_policy)
        box.n_supports = len(parts)
        box.seconds = time.perf_counter() - t0
        return box

    def localize(self, target: sitk.Image, organs: Sequence[str], modality: str | None = None) -> list[OrganBox]:
        """Boxes of ``organs`` in ``target`` (one :class:`OrganBox` per organ, in order)."""
        from uae_ray.volume import detect_modality

        scan = MedLAMScan.prepare(target, detect_modality(target, "<target>", modality),
                                  self.model.config.input_spacing_mm)
        centre = self.target_centre(scan)
        for _, line in partial_supports(self.supports, organs):
            logger.warning("%s", line)
        out = []
        for organ in organs:
            parts, missing = [], []
            for support in self.supports:
                if support.has(organ):
                    parts.append(self.support_organ(support, organ))
                else:
                    missing.append(support.missing_reason(organ))
            if not parts:
                out.append(OrganBox.empty(organ, STATUS_NO_SUPPORT,
                                          f"{organ}: no support scan has this organ ({'; '.join(missing)})", self.method))
                continue
            out.append(self.localize_organ(scan, organ, parts, centre))
        return out


__all__ = [
    "CUT_POLICIES",
    "DEFAULT_CUT_POLICY",
    "DEFAULT_EMBEDDING_MODE",
    "DEFAULT_LOCALIZE_METHOD",
    "EMBEDDING_MODES",
    "MedLAMLocalizer",
    "MedLAMScan",
    "MedLAMSupportOrgan",
    "EXTREME_NAMES",
    "EmbeddingLocalizer",
    "EmbeddingLocalizerConfig",
    "LOCALIZE_METHODS",
    "OrganBox",
    "STATUSES",
    "SupportEstimate",
    "box_iou",
    "clip_box",
    "estimate_organs",
    "vote",
    "wall_distance",
    "weighted_median",
]
