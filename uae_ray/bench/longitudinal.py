"""Synthetic longitudinal pairs of real CTs for ``uae-ray bench tracking`` (exact ground truth).

For every CT of the curated cases (``../shared/data``) one pair is made:

* **baseline**: the real scan.
* **lesions**: the real tumour masks (labels named gtv / tumor / tumour / lesion; one lesion
  per connected component; centre = centroid, radius = that of a sphere of the same volume),
  plus ``points_per_case`` pseudo-lesions of radius :data:`PSEUDO_RADIUS_MM`: interior points of
  randomly chosen organs (the other labels; planning volumes such as ``ptv`` excluded), then,
  where a case has too few organs, points inside the body (CT > -300 HU). Centres are kept at
  least :data:`MIN_SEPARATION_MM` apart.
* **follow-up**: the baseline deformed by an anatomical change ``D`` and then by a random
  synthetic warp ``S`` (:func:`~uae_ray.data.synthetic.synthetic_warp`: affine up to
  10 deg / 10 % / 20 mm, B-spline warp, intensity change and noise, field-of-view crop):
  ``F(q) = f(I(D(S(q))))``. ``D`` (a displacement field, pull-back convention
  ``D(y) = y + u(y)``) sums

  - breathing (chest and abdomen cases only): a superior-inferior displacement with an
    anterior-posterior part (0.3x) of 5-15 mm (inhale or exhale) that peaks at a
    "diaphragm" level (near the inferior end of a chest scan, the superior end of an
    abdominal one) and decays over 120 mm above it and 180 mm below it;
  - lesion growth or shrinkage: around every lesion a radial field that scales the lesion
    uniformly by a factor ``g`` in 0.7-1.3 (log-uniform) and fades out over one radius
    outside it (``u = (1/g - 1)(y - c) w(|y - c|)``, ``w = 1`` inside, Gaussian beyond).

  The ground truth of a baseline point ``p`` is exact: ``y = D^-1(p)`` (fixed-point
  iteration, residual < 0.01 mm) and then ``q = S^-1(y)``
  (:meth:`~uae_ray.data.synthetic.SyntheticWarp.to_warped`). Lesion centres are fixed points
  of their own growth field, so growth changes the lesion's appearance, not its true centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.data.cases import Case
from uae_ray.data.synthetic import SyntheticWarp, body_points, synthetic_warp
from uae_ray.tasks.points_io import LesionPoints
from uae_ray.volume import Grid, read_labels

logger = logging.getLogger(__name__)

LESION_WORDS = ("gtv", "tumor", "tumour", "lesion")
EXCLUDED_LABELS = frozenset({"ptv", "ctv", "itv"})  # planning volumes: neither lesion nor organ
PSEUDO_RADIUS_MM = 10.0
MIN_SEPARATION_MM = 30.0
MIN_TUMOUR_MM3 = 100.0
BREATHING_REGIONS = ("chest", "abdomen", "abdomen-pelvis", "thorax")
GROWTH_RANGE = (0.7, 1.3)
BREATHING_MM = (5.0, 15.0)


@dataclass
class BenchLesions:
    """The lesions of one case and what they are (``tumour``, ``organ`` or ``body``)."""

    lesions: LesionPoints
    kinds: tuple[str, ...]


def is_lesion_label(name: str) -> bool:
    """True for label names of tumours / lesions (gtv, tumor, tumour, lesion)."""
    low = name.lower()
    return any(w in low for w in LESION_WORDS)


def _far_enough(p: np.ndarray, chosen: list[np.ndarray], sep: float) -> bool:
    return all(np.linalg.norm(p - q) >= sep for q in chosen)


def _organ_point(labels: sitk.Image, value: int, rng: np.random.Generator) -> np.ndarray | None:
    """A random interior point of a label (at least min(5 mm, 60 % of its deepest point) inside)."""
    binary = labels == value
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(binary)
    if 1 not in stats.GetLabels():
        return None
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    lo = [max(0, v - 2) for v in (x0, y0, z0)]
    hi = [min(s, v + w + 2) for s, v, w in zip(binary.GetSize(), (x0, y0, z0), (sx, sy, sz))]
    crop = sitk.RegionOfInterest(binary, [h - l for l, h in zip(lo, hi)], lo)
    depth = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(crop, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    )
    need = min(5.0, 0.6 * float(depth.max()))
    zyx = np.argwhere(depth >= need)
    if len(zyx) == 0:
        return None
    pick = zyx[rng.integers(len(zyx))][::-1].astype(float)
    return Grid.from_image(crop).index_to_world(pick)[0]


def case_lesions(case: Case, image: sitk.Image, rng: np.random.Generator, points_per_case: int) -> BenchLesions:
    """The tumours of a case plus ``points_per_case`` organ / body pseudo-lesions (module docstring)."""
    names: list[str] = []
    centres: list[np.ndarray] = []
    radii: list[float] = []
    kinds: list[str] = []
    label_names = {int(k): v for k, v in (case.meta.get("labels") or {}).items()}
    labels = read_labels(case.labels_path) if case.labels_path is not None and label_names else None
    organs: list[tuple[int, str]] = []
    if labels is not None:
        voxel = float(np.prod(labels.GetSpacing()))
        for value, name in sorted(label_names.items()):
            if name.lower() in EXCLUDED_LABELS:
                continue
            if not is_lesion_label(name):
                organs.append((value, name))
                continue
            comps = sitk.RelabelComponent(sitk.ConnectedComponent(labels == value), sortByObjectSize=True)
            stats = sitk.LabelShapeStatisticsImageFilter()
            stats.Execute(comps)
            for k, comp in enumerate(stats.GetLabels()):
                volume = stats.GetNumberOfPixels(comp) * voxel
                if volume < MIN_TUMOUR_MM3 and k > 0:
                    continue
                names.append(name if k == 0 else f"{name}_{k + 1}")
                centres.append(np.asarray(stats.GetCentroid(comp)))
                radii.append(float((3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)))
                kinds.append("tumour")
    n_pseudo = 0
    for idx in rng.permutation(len(organs)):
        if n_pseudo >= points_per_case:
            break
        value, name = organs[int(idx)]
        p = _organ_point(labels, value, rng)
        if p is None or not _far_enough(p, centres, MIN_SEPARATION_MM):
            continue
        names.append(name)
        centres.append(p)
        radii.append(PSEUDO_RADIUS_MM)
        kinds.append("organ")
        n_pseudo += 1
    if n_pseudo < points_per_case:
        for p in body_points(image, 400, rng):
            if n_pseudo >= points_per_case:
                break
            if not _far_enough(p, centres, MIN_SEPARATION_MM):
                continue
            names.append(f"body_{n_pseudo + 1}")
            centres.append(p)
            radii.append(PSEUDO_RADIUS_MM)
            kinds.append("body")
            n_pseudo += 1
    lesions = LesionPoints(tuple(names), np.asarray(centres).reshape(-1, 3), np.asarray(radii, dtype=np.float64))
    return BenchLesions(lesions, tuple(kinds))


# --------------------------------------------------------------------------- the follow-up


def _bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    corners = Grid.from_image(image).corners_world()
    return corners.min(axis=0), corners.max(axis=0)


def _field_grid(image: sitk.Image, margin_mm: float = 30.0, max_voxels: float = 2e6) -> Grid:
    lo, hi = _bounds(image)
    lo, hi = lo - margin_mm, hi + margin_mm
    spacing = max(3.0, float(np.prod(hi - lo) / max_voxels) ** (1.0 / 3.0))
    size = np.ceil((hi - lo) / spacing).astype(int) + 1
    return Grid(tuple(lo), (spacing,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1), tuple(int(s) for s in size))


def _growth(y: np.ndarray, centre: np.ndarray, radius: float, factor: float) -> np.ndarray:
    """Pull-back displacement (.., 3) that scales a ball of ``radius`` about ``centre`` by ``factor``."""
    d = y - centre
    dist = np.linalg.norm(d, axis=-1, keepdims=True)
    w = np.exp(-np.square(np.maximum(dist - radius, 0.0) / radius))
    return (1.0 / factor - 1.0) * d * w


def _breathing(y: np.ndarray, z_d: float, amp: float) -> np.ndarray:
    """Pull-back displacement (.., 3) of breathing: superior-inferior (+0.3 AP), peak at ``z_d``."""
    dz = y[..., 2:3] - z_d
    m = np.where(dz >= 0, np.exp(-np.square(dz / 120.0)), np.exp(-np.square(dz / 180.0)))
    return amp * m * np.array([0.0, 0.3, 1.0])


def _min_jacobian(u: np.ndarray, spacing: float) -> float:
    """Smallest Jacobian determinant of ``y -> y + u(y)`` for a field (z, y, x, 3) on an
    isotropic grid with identity direction."""
    # j[k][a]: derivative of component k (x, y, z) along world axis a (x, y, z).
    j = [[np.gradient(u[..., k], spacing, axis=2 - a) + (1.0 if k == a else 0.0) for a in range(3)] for k in range(3)]
    det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
           - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
           + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    return float(det.min())


def anatomical_change(
    image: sitk.Image, case: Case, lesions: LesionPoints, rng: np.random.Generator
) -> tuple[sitk.DisplacementFieldTransform, dict[str, Any]]:
    """The displacement field ``D`` (breathing + growth, see the module docstring)."""
    lo, hi = _bounds(image)
    extent = float(hi[2] - lo[2])
    region = str(case.meta.get("region", "")).lower()
    amp = 0.0
    z_d = float(lo[2])
    if region in BREATHING_REGIONS:
        amp = float(rng.uniform(*BREATHING_MM) * rng.choice([-1.0, 1.0]))
        frac = float(rng.uniform(0.0, 0.3))
        z_d = float(lo[2] + frac * extent) if region in ("chest", "thorax") else float(hi[2] - frac * extent)
    factors = np.exp(rng.uniform(np.log(GROWTH_RANGE[0]), np.log(GROWTH_RANGE[1]), len(lesions)))
    grid = _field_grid(image)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in grid.shape_zyx), indexing="ij")
    world = grid.index_to_world(np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(float)).reshape(*grid.shape_zyx, 3)
    del zz, yy, xx
    scale = 1.0
    for _ in range(4):
        u = _breathing(world, z_d, amp)
        for c, r, g in zip(lesions.xyz, lesions.radius_mm, factors):
            u = u + _growth(world, c, float(r), float(1.0 + scale * (g - 1.0)))
        # Jacobian determinant of y -> y + u(y) on the field grid (identity direction).
        det_min = _min_jacobian(u, grid.spacing[0])
        if det_min > 0.2:
            break
        logger.info("%s: growth fields overlap (min det %.2f); halving them", case.case_id, det_min)
        scale *= 0.5
    field = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    grid.apply_to(field)
    transform = sitk.DisplacementFieldTransform(field)
    params = {
        "breathing_mm": amp,
        "diaphragm_z": z_d,
        "growth_factor": (1.0 + scale * (factors - 1.0)).tolist(),
        "field_spacing_mm": grid.spacing[0],
        "min_jacobian": det_min,
    }
    return transform, params


def invert_field(transform: sitk.Transform, points: np.ndarray, tol_mm: float = 1e-4, max_iter: int = 200) -> np.ndarray:
    """``y`` with ``D(y) = p`` for each point (fixed-point iteration ``y <- p - u(y)``).

    Raises:
        RuntimeError: A residual stays above 0.01 mm.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    y = p.copy()
    for _ in range(max_iter):
        dy = np.array([transform.TransformPoint(tuple(q)) for q in y]) - y
        r = p - (y + dy)
        y = p - dy
        if np.all(np.linalg.norm(r, axis=1) < tol_mm):
            break
    res = np.linalg.norm(np.array([transform.TransformPoint(tuple(q)) for q in y]) - p, axis=1)
    if res.size and res.max() >= 0.01:
        raise RuntimeError(f"anatomical change inversion did not converge (max residual {res.max():.4f} mm)")
    return y


@dataclass
class LongitudinalPair:
    """A synthetic follow-up of a real baseline and the lesions' true follow-up positions."""

    baseline: sitk.Image
    followup: sitk.Image
    lesions: BenchLesions
    truth: np.ndarray
    inside: np.ndarray
    params: dict[str, Any]


def make_pair(case: Case, image: sitk.Image, rng: np.random.Generator, points_per_case: int) -> LongitudinalPair:
    """Baseline, lesions and follow-up of one case with exact ground truth (module docstring)."""
    lesions = case_lesions(case, image, rng, points_per_case)
    change, params = anatomical_change(image, case, lesions.lesions, rng)
    bg = float(sitk.GetArrayViewFromImage(image).min())
    deformed = sitk.Resample(image, image, change, sitk.sitkLinear, bg, image.GetPixelID())
    warp: SyntheticWarp = synthetic_warp(deformed, seed=rng)
    truth = warp.to_warped(invert_field(change, lesions.lesions.xyz))
    inside = Grid.from_image(warp.image).contains(truth)
    params.update(warp.params)
    return LongitudinalPair(image, warp.image, lesions, truth, inside, params)
