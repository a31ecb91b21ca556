"""The two-pass registrar: embed the fixed image once, register many moving images onto it."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import SimpleITK as sitk
import numpy as np

from uae_ray.matching import embed_image, Embedder, EmbeddingMaps
from uae_ray.tasks.register.config import RegistrationConfig, RegistrationError, RegistrationResult
from uae_ray.tasks.register.correspondences import (
    _check_count,
    _check_models,
    _match,
    _result,
    _rotation_deg,
    Correspondences,
    fit_correspondences,
    fit_or_fall_back,
)
from uae_ray.tasks.register.points import body_mask, grid_points
from uae_ray.tasks.transforms import KINDS, convert, make_transform
from uae_ray.volume import detect_modality

logger = logging.getLogger(__name__)


class Registrar:
    """Registers moving images onto one fixed image (the fixed image is embedded once).

    Two passes when the images are at hand: the first (rigid) estimate de-rotates the moving
    image (resampled onto the fixed grid, its field of view kept as the valid region), which is
    embedded and matched again; the final fit of that second pass is composed with the first.
    The embeddings are not rotation invariant, so large rotations bias the first pass's matches
    by a few mm; the second pass sees almost none. It is skipped when the first rotation is
    below ``config.second_pass_deg``.

    Args:
        embedder: Any :class:`Embedder` (in-process torch or Triton).
        fixed: The fixed image.
        fixed_modality: ``"CT"`` or ``"MR"``; ``None`` detects it.
        config: :class:`RegistrationConfig` for every pair; ``None``: the defaults, or
            :meth:`RegistrationConfig.cross_modality` for a moving image of the other modality.
        fixed_name: Name of the fixed image in messages.
        fixed_maps: Precomputed embeddings of ``fixed`` (skips embedding it).
    """

    def __init__(
        self,
        embedder: Embedder | None,
        fixed: sitk.Image,
        fixed_modality: str | None = None,
        config: RegistrationConfig | None = None,
        fixed_name: str = "<fixed>",
        fixed_maps: EmbeddingMaps | None = None,
    ) -> None:
        self.embedder = embedder
        self._config = config
        self.config = config or RegistrationConfig()
        self.fixed = fixed
        self.fixed_name = fixed_name
        self.fixed_modality = detect_modality(fixed, fixed_name, fixed_modality)
        t0 = time.perf_counter()
        if fixed_maps is None:
            if embedder is None:
                raise ValueError("Registrar needs an embedder or the fixed image's maps")
            fixed_maps = embed_image(fixed, embedder, self.fixed_modality)
        self.fixed_maps = fixed_maps
        self.embed_seconds = time.perf_counter() - t0
        self._mask = body_mask(fixed, self.fixed_modality, self.config.ct_body_hu)
        self._points: dict[tuple[int, float], np.ndarray] = {}
        self.points = self.grid(self.config)

    def config_for(self, moving_modality: str | None) -> RegistrationConfig:
        """The configuration for a moving image of ``moving_modality``."""
        if self._config is not None or moving_modality in (None, self.fixed_modality):
            return self.config
        return RegistrationConfig.cross_modality()

    def grid(self, config: RegistrationConfig) -> np.ndarray:
        """The fixed body grid points of ``config`` (cached)."""
        key = (config.max_points, config.min_spacing_mm)
        if key not in self._points:
            pts = grid_points(*self._mask, config.max_points, config.min_spacing_mm)
            if len(pts) == 0:
                raise RegistrationError(f"{self.fixed_name}: no body voxels to place registration points on")
            self._points[key] = pts
        return self._points[key]

    @property
    def model_version(self) -> str:
        return self.fixed_maps.model_version

    def register(
        self,
        moving: sitk.Image | None,
        kind: str = "rigid",
        moving_modality: str | None = None,
        refine: bool = False,
        moving_name: str = "<moving>",
        moving_maps: EmbeddingMaps | None = None,
    ) -> RegistrationResult:
        """Registers ``moving`` onto the fixed image.

        Args:
            moving: The moving image; ``None`` with ``moving_maps`` gives a one-pass result
                without refinement.
            kind: ``"rigid"`` or ``"affine"``.
            moving_modality: ``"CT"``/``"MR"``; ``None`` detects it.
            refine: Run the short MI refinement from the landmark transform.
            moving_maps: Precomputed embeddings of ``moving``.

        Returns:
            A :class:`RegistrationResult` (transform fixed -> moving).

        Raises:
            RegistrationError: Too few correspondences (one line naming both images).
        """
        refine_kinds = (kind,) if refine else ()
        out = self.register_many(moving, (kind,), moving_modality, refine_kinds, moving_name, moving_maps)
        result = out[f"{kind}+refine" if refine else kind]
        if isinstance(result, RegistrationError):
            raise result
        return result

    def register_many(
        self,
        moving: sitk.Image | None,
        kinds: tuple[str, ...] = ("rigid", "affine"),
        moving_modality: str | None = None,
        refine_kinds: tuple[str, ...] = (),
        moving_name: str = "<moving>",
        moving_maps: EmbeddingMaps | None = None,
    ) -> dict[str, RegistrationResult | RegistrationError]:
        """Several transform kinds from one set of matches (see :meth:`register`).

        Returns:
            ``{kind: result}``, plus ``{kind + "+refine": result}`` for each of ``refine_kinds``.
            A kind whose fit fails (too few inliers, an affine fit of a flat point set) maps to
            its :class:`RegistrationError` instead; the other kinds are still returned.

        Raises:
            RegistrationError: Too few correspondences, or every kind failed.
        """
        for k in (*kinds, *refine_kinds):
            if k not in KINDS:
                raise ValueError(f"unknown transform kind {k!r}; expected one of {', '.join(KINDS)}")
        if moving is None and (moving_maps is None or refine_kinds):
            raise ValueError("register needs the moving image (or its maps, without refinement)")
        pair = f"{self.fixed_name} -> {moving_name}"
        t0 = time.perf_counter()
        mod = detect_modality(moving, moving_name, moving_modality) if moving is not None else moving_modality
        cfg = self.config_for(mod)
        points = self.grid(cfg)
        if moving_maps is None:
            if self.embedder is None:
                raise ValueError("Registrar has no embedder for the moving image")
            moving_maps = embed_image(moving, self.embedder, mod)
        seconds = {"embed_fixed": self.embed_seconds, "embed_moving": time.perf_counter() - t0}
        _check_models(self.fixed_maps, moving_maps, pair)
        corr, first, more = self._two_pass(moving, mod, moving_maps, pair, cfg, points)
        seconds.update(more)
        results: dict[str, RegistrationResult | RegistrationError] = {}
        for kind in dict.fromkeys((*kinds, *refine_kinds)):
            t0 = time.perf_counter()
            try:
                fit, fitted, note = fit_or_fall_back(corr, kind, cfg, pair)
            except RegistrationError as e:
                results[kind] = e
                continue
            results[kind] = _result(corr, fit, fitted, moving_maps, points,
                                    {**seconds, "fit": time.perf_counter() - t0}, first)
            results[kind].note = note
        for kind in refine_kinds:
            from uae_ray.tasks.mi import mi_register

            base = results[kind]
            if isinstance(base, RegistrationError):
                results[f"{kind}+refine"] = base
                continue
            t0 = time.perf_counter()
            refined = mi_register(
                self.fixed, moving, base.transform, base.kind, self.fixed_modality, mod or "CT", seed=cfg.seed,
                iterations=cfg.refine_iterations, spacing_mm=cfg.refine_spacing_mm, threads=cfg.refine_threads,
            )
            results[f"{kind}+refine"] = RegistrationResult(
                **{**base.__dict__, "transform": refined, "refined": True,
                   "seconds": {**base.seconds, "refine": time.perf_counter() - t0}}
            )
        out = {k: v for k, v in results.items() if k in kinds or k.endswith("+refine")}
        for k, v in out.items():  # the file type the user asked for, even when the fit fell back to rigid
            if k.startswith("affine") and isinstance(v, RegistrationResult) and v.kind == "rigid":
                v.transform = convert(v.transform, "affine")
                v.note = f"{v.note}; written as an AffineTransform with the rigid fit's matrix"
        if all(isinstance(v, RegistrationError) for v in out.values()):
            raise next(iter(out.values()))
        return out

    def _two_pass(
        self, moving: sitk.Image | None, mod: str | None, moving_maps: EmbeddingMaps, pair: str,
        cfg: RegistrationConfig, pts: np.ndarray,
    ) -> tuple[Correspondences, tuple[np.ndarray, np.ndarray] | None, dict[str, float]]:
        """The final correspondences, and the first-pass rigid map when a second pass ran.

        The first pass matches every ``coarse_every``-th grid point over the whole moving image
        (all of them when that gives too few matches for a first estimate, e.g. a small
        overlap), and a rigid fit of those predicts where the other points lie. With a large
        rotation the moving image is then de-rotated and the central ``second_points`` (all by
        default for CT-MR) are matched into it within ``second_window_mm`` (second pass);
        otherwise (or without the images) the rest of the grid is matched in the moving image
        within ``window_mm`` of the prediction. When a second pass may follow, the first pass
        finds voxel-precise matches only (no sub-voxel refinement: the second pass supersedes
        them), and accepts a first estimate from ``min_correspondences`` matches (else twice
        that); should no second pass run after all, every point is matched again, refined.
        """
        out: dict[str, float] = {"match": 0.0}
        need = max(cfg.min_correspondences, 4)
        second = moving is not None and self.embedder is not None and cfg.second_pass_deg is not None
        step = cfg.coarse_every if len(pts) >= cfg.coarse_every * 2 * need else 1
        coarse_idx = np.arange(0, len(pts), step)
        coarse_cfg = replace(cfg, matcher=replace(cfg.matcher, subvoxel=0)) if second else cfg

        def match_into(maps: EmbeddingMaps, idx: np.ndarray, key: str, guess: np.ndarray | None = None,
                       window: float | None = None, config: RegistrationConfig = cfg) -> Correspondences:
            t0 = time.perf_counter()
            corr = _match(self.fixed_maps, maps, pts[idx], config, guess, window)
            out[key] = out.get(key, 0.0) + time.perf_counter() - t0
            return corr

        def merge(a: Correspondences, b: Correspondences) -> Correspondences:
            return Correspondences(a.n_points + b.n_points, np.concatenate([a.fixed, b.fixed]),
                                   np.concatenate([a.moving, b.moving]))

        corr = match_into(moving_maps, coarse_idx, "match", config=coarse_cfg)
        rest = np.setdiff1d(np.arange(len(pts)), coarse_idx)
        if len(rest) and len(corr.fixed) < (1 if second else 2) * need:  # too few for a first estimate
            corr, rest = merge(corr, match_into(moving_maps, rest, "match", config=coarse_cfg)), rest[:0]
        first = None
        if len(corr.fixed) >= need and (len(rest) or second):
            try:
                first = fit_correspondences(corr, "rigid", cfg, pair)[:2]
            except RegistrationError:
                first = None
        if second and first is not None and _rotation_deg(first[0]) >= cfg.second_pass_deg:
            t0 = time.perf_counter()
            # the network's receptive field needs context beyond the searched box
            idx2 = _central(pts, cfg.second_points)
            margin = cfg.second_window_mm + cfg.context_mm
            net = self.embedder.config
            moved = _resample_nan(self.fixed, moving, make_transform(*first, "rigid"), net.input_spacing_mm,
                                  pts[idx2], margin, net.pad_multiple)
            moved_maps = embed_image(moved, self.embedder, mod)
            out["embed_second"] = time.perf_counter() - t0
            # The moved image lies on the fixed grid: each point is predicted where it is.
            corr2 = match_into(moved_maps, idx2, "match_second", pts[idx2], cfg.second_window_mm)
            if len(corr2.fixed) >= need:
                return corr2, first, out
            logger.warning("%s: second pass found %d correspondences; keeping the first", pair, len(corr2.fixed))
        if coarse_cfg is not cfg:  # the first pass was voxel-precise: match every point again, refined
            corr, rest = Correspondences(0, pts[:0], pts[:0]), np.arange(len(pts))
        if len(rest):
            guess = None if first is None else pts[rest] @ first[0].T + first[1]
            corr = merge(corr, match_into(moving_maps, rest, "match", guess))
        return _check_count(corr, cfg, pair), None, out


def _central(points: np.ndarray, count: int | None) -> np.ndarray:
    """Indices of the ``count`` points nearest the centre of their box, in the box's own
    proportions (so that the smallest box around them is a scaled-down copy of it); all of
    them when ``count`` is ``None`` or not smaller."""
    if count is None or count >= len(points):
        return np.arange(len(points))
    lo, hi = points.min(axis=0), points.max(axis=0)
    dist = np.max(np.abs(points - (lo + hi) / 2.0) / np.maximum((hi - lo) / 2.0, 1e-6), axis=1)
    return np.sort(np.argsort(dist, kind="stable")[:count])


def _resample_nan(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, spacing_mm: float,
                  points: np.ndarray, margin_mm: float, multiple: int = 1) -> sitk.Image:
    """``moving`` resampled through ``transform`` onto an isotropic ``spacing_mm`` grid over the
    fixed image (the network's input spacing, so embedding it resamples almost nothing), cropped
    to the box of ``points`` plus ``margin_mm`` (all that the second pass searches), float32, NaN
    outside the moving field of view (so the embedding's valid mask keeps that field of view).

    Each size is rounded to the nearest multiple of ``multiple`` (the network pads its input to
    one): trimmed from the side with the wider margin, or grown, instead of padded with air.
    """
    from uae_ray.volume import Grid, model_grid, resample_to_grid

    full = model_grid(fixed, spacing_mm=spacing_mm, pad_multiple=1)
    origin, size = np.asarray(full.origin), np.asarray(full.size)
    p_lo, p_hi = (points.min(axis=0) - origin) / spacing_mm, (points.max(axis=0) - origin) / spacing_mm
    lo = np.clip(np.floor(p_lo - margin_mm / spacing_mm), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(p_hi + margin_mm / spacing_mm), lo, size - 1).astype(int)
    room_lo, room_hi = p_lo - lo, hi - p_hi  # voxels between the points' box and the crop's faces
    n = hi - lo + 1
    target = np.maximum(multiple, np.rint(n / multiple) * multiple).astype(int)
    target = np.where(n - target > np.floor(room_lo) + np.floor(room_hi), target + multiple, target)  # keep the points
    trim, grow = np.maximum(n - target, 0), np.maximum(target - n, 0)
    from_lo = np.clip(np.rint((trim + room_lo - room_hi) / 2), trim - np.floor(room_hi), np.floor(room_lo))
    lo = lo + np.clip(from_lo, 0, trim).astype(int) - grow // 2
    n = target
    grid = Grid(tuple(origin + lo * spacing_mm), full.spacing, full.direction, tuple(int(v) for v in n))
    return resample_to_grid(moving, grid, sitk.sitkLinear, float("nan"), sitk.sitkFloat32, transform)


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    embedder: Embedder,
    kind: str = "rigid",
    fixed_modality: str | None = None,
    moving_modality: str | None = None,
    refine: bool = False,
    config: RegistrationConfig | None = None,
    fixed_name: str = "<fixed>",
    moving_name: str = "<moving>",
) -> RegistrationResult:
    """Registers one pair: embeds both images, matches a body grid, fits ``kind`` (see the
    module docstring). The transform maps fixed-space points to moving-space points."""
    registrar = Registrar(embedder, fixed, fixed_modality, config, fixed_name)
    return registrar.register(moving, kind, moving_modality, refine, moving_name)
