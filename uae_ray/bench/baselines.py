"""Registration baselines for landmark transfer: SimpleITK (Mattes MI rigid/affine) and elastix."""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from uae_ray.tasks.mi import mi_stage, prepare_for_mi


def _prepare(image: sitk.Image, modality: str, spacing_mm: float) -> sitk.Image:
    """See :func:`uae_ray.tasks.mi.prepare_for_mi`."""
    return prepare_for_mi(image, modality, spacing_mm)


def _run_stage(f: sitk.Image, m: sitk.Image, transform: sitk.Transform, seed: int, iterations: int,
               threads: int | None = None) -> None:
    mi_stage(f, m, transform, seed, iterations, threads=threads)


#: Initialisations of the SimpleITK baseline: ``geometry`` aligns the image centres
#: (CenteredTransformInitializer GEOMETRY), ``identity`` starts from the identity.
MI_INITS = ("geometry", "identity")


def rigid_affine_registration(
    fixed: sitk.Image,
    moving: sitk.Image,
    modality: str = "CT",
    seed: int = 0,
    iterations: int = 200,
    spacing_mm: float = 3.0,
    moving_modality: str | None = None,
    init: str = "geometry",
    threads: int | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, sitk.Transform]:
    """Multi-resolution Mattes-MI registration (SimpleITK), as a user would run it.

    Both images are resampled to ``spacing_mm`` (after anti-alias smoothing), the centres are
    aligned (``init="geometry"``) or the identity is the start, then a rigid stage runs, then an affine stage started from it; each
    stage over two levels.

    Args:
        modality: Modality of ``fixed`` (and of ``moving`` unless ``moving_modality`` is given);
            Mattes MI is a multi-modal metric, so CT <-> MR works the same way.
        init: ``"geometry"`` (align the image centres) or ``"identity"`` (see :data:`MI_INITS`).
        threads: Registration threads (``None``: SimpleITK's default; only 1 repeats exactly).
        timings: If given, receives ``rigid_s`` (preparation + rigid stage) and ``affine_s``
            (the affine stage alone; the affine result costs both).

    Returns:
        ``{"rigid": ..., "affine": ...}``: transforms mapping fixed-space points to moving-space
        points (ITK convention).
    """
    t0 = time.perf_counter()
    f = _prepare(fixed, modality, spacing_mm)
    m = _prepare(moving, moving_modality or modality, spacing_mm)
    if init not in MI_INITS:
        raise ValueError(f"unknown initialisation {init!r}; expected one of {', '.join(MI_INITS)}")
    if init == "geometry":
        rigid = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
            f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))
    else:
        rigid = sitk.Euler3DTransform()
        rigid.SetCenter(f.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in f.GetSize()]))
    _run_stage(f, m, rigid, seed, iterations, threads)
    t1 = time.perf_counter()
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _run_stage(f, m, affine, seed, iterations, threads)
    if timings is not None:
        timings.update(rigid_s=t1 - t0, affine_s=time.perf_counter() - t1)
    return {"rigid": rigid, "affine": affine}


def affine_registration(fixed: sitk.Image, moving: sitk.Image, modality: str = "CT", seed: int = 0) -> sitk.Transform:
    """The affine result of :func:`rigid_affine_registration` (fixed -> moving)."""
    return rigid_affine_registration(fixed, moving, modality, seed)["affine"]


def transfer_points(transform: sitk.Transform, moving_points: np.ndarray) -> np.ndarray:
    """Maps moving-space points into fixed space through the inverse of a fixed->moving transform.

    Args:
        transform: fixed->moving, invertible (rigid/affine).
        moving_points: (N, 3) world points in the moving image.

    Returns:
        (N, 3) world points in the fixed image.
    """
    inverse = transform.GetInverse()
    return np.array([inverse.TransformPoint(tuple(map(float, p))) for p in moving_points]).reshape(-1, 3)


#: Registration baselines of the accuracy benchmark: identity (the template's world coordinates
#: unchanged), SimpleITK (rigid, affine) and elastix (affine, affine + B-spline).
BASELINES = ("identity", "sitk", "elastix")
BASELINE_LABELS = {
    "identity": "identity (same world coordinates)",
    "sitk_rigid": "SimpleITK rigid (MI)",
    "sitk_affine": "SimpleITK affine (MI)",
    "elastix_affine": "elastix affine (MI)",
    "elastix_bspline": "elastix affine+B-spline (MI)",
}


def _centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))


def transfer_by_registration(
    template: sitk.Image,
    target: sitk.Image,
    points: np.ndarray,
    template_modality: str = "CT",
    target_modality: str = "CT",
    baselines: tuple[str, ...] = BASELINES,
    seed: int = 0,
) -> dict[str, dict]:
    """Transfers template points to the target through each registration baseline.

    Returns:
        ``{key: {"points": (N, 3), "seconds": s}}`` with keys of :data:`BASELINE_LABELS`. When
        elastix fails on a pair, its entries carry ``"failed": message`` and the points moved by
        the translation between the image centres (what its initialisation gives).
    """
    out: dict[str, dict] = {}
    if "identity" in baselines:
        out["identity"] = {"points": np.asarray(points, dtype=np.float64).reshape(-1, 3).copy(), "seconds": 0.0}
    if "sitk" in baselines:
        t0 = time.perf_counter()
        transforms = rigid_affine_registration(target, template, target_modality, seed=seed,
                                               moving_modality=template_modality)
        seconds = time.perf_counter() - t0
        for kind, tx in transforms.items():
            out[f"sitk_{kind}"] = {"points": transfer_points(tx, points), "seconds": seconds}
    if "elastix" in baselines:
        from uae_ray.bench.elastix import elastix_registration

        try:
            transfers, times = elastix_registration(template, target, template_modality, target_modality)
            out["elastix_affine"] = {"points": transfers["affine"](points), "seconds": times["affine_s"]}
            out["elastix_bspline"] = {"points": transfers["bspline"](points),
                                      "seconds": times["affine_s"] + times["bspline_s"]}
        except RuntimeError as exc:
            moved = np.asarray(points, dtype=np.float64) + (_centre(target) - _centre(template))
            message = " ".join(str(exc).split())[-300:]
            for key in ("elastix_affine", "elastix_bspline"):
                out[key] = {"points": moved, "seconds": float("nan"), "failed": message}
    return out
