"""Registration baselines for landmark transfer: SimpleITK (Mattes MI rigid/affine) and elastix."""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk


def _prepare(image: sitk.Image, modality: str, spacing_mm: float) -> sitk.Image:
    """Float copy, CT clamped to [-1000, 1500] HU, smoothed and resampled to ``spacing_mm``."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    if modality == "CT":
        image = sitk.Clamp(image, sitk.sitkFloat32, -1000.0, 1500.0)
    spacing = image.GetSpacing()
    size = [max(1, round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), spacing)]
    sigma = [max(0.0, (spacing_mm - s) / 2) for s in spacing]
    # Discrete Gaussian: a zero variance leaves an axis unsmoothed (the recursive one rejects it).
    smooth = sitk.DiscreteGaussian(image, [v * v for v in sigma], 32, 0.01, True) if any(sigma) else image
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         (spacing_mm,) * 3, image.GetDirection(), -1000.0 if modality == "CT" else 0.0)


def _run_stage(f: sitk.Image, m: sitk.Image, transform: sitk.Transform, seed: int, iterations: int) -> None:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(f, m)


def rigid_affine_registration(
    fixed: sitk.Image,
    moving: sitk.Image,
    modality: str = "CT",
    seed: int = 0,
    iterations: int = 200,
    spacing_mm: float = 3.0,
    moving_modality: str | None = None,
) -> dict[str, sitk.Transform]:
    """Multi-resolution Mattes-MI registration (SimpleITK), as a user would run it.

    Both images are resampled to ``spacing_mm`` (after anti-alias smoothing), the centres are
    aligned (geometry), then a rigid stage runs, then an affine stage started from it; each
    stage over two levels.

    Args:
        modality: Modality of ``fixed`` (and of ``moving`` unless ``moving_modality`` is given);
            Mattes MI is a multi-modal metric, so CT <-> MR works the same way.

    Returns:
        ``{"rigid": ..., "affine": ...}``: transforms mapping fixed-space points to moving-space
        points (ITK convention).
    """
    f = _prepare(fixed, modality, spacing_mm)
    m = _prepare(moving, moving_modality or modality, spacing_mm)
    rigid = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    )
    _run_stage(f, m, rigid, seed, iterations)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    _run_stage(f, m, affine, seed, iterations)
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


#: Registration baselines of the accuracy benchmark: SimpleITK (rigid, affine) and elastix
#: (affine, affine + B-spline).
BASELINES = ("sitk", "elastix")
BASELINE_LABELS = {
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
