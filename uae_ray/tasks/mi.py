"""Intensity-based registration with SimpleITK: Mattes mutual information, rigid or affine.

Used twice: as the optional refinement of the landmark-based registration
(:mod:`uae_ray.tasks.register`, ``refine=True``) and by the benchmarks as the classical baseline
(:mod:`uae_ray.bench.baselines`). Mattes MI is a multi-modal metric, so CT <-> MR works the same
way as CT <-> CT. Transforms map fixed-space points to moving-space points (ITK convention).
"""

from __future__ import annotations

import SimpleITK as sitk

from uae_ray.tasks.transforms import convert


def prepare_for_mi(image: sitk.Image, modality: str, spacing_mm: float) -> sitk.Image:
    """Float copy, CT clamped to [-1000, 1500] HU, smoothed and resampled to ``spacing_mm``
    (isotropic, on the image's own direction)."""
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


def mi_stage(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    seed: int = 0,
    iterations: int = 200,
    learning_rate: float = 2.0,
    shrink_factors: tuple[int, ...] = (2, 1),
    smoothing_sigmas: tuple[float, ...] = (1.0, 0.0),
    sampling: float = 0.05,
    threads: int | None = None,
) -> float:
    """One Mattes-MI stage (regular-step gradient descent, physical-shift scales), optimising
    ``transform`` in place over the given pyramid levels.

    Args:
        fixed, moving: Images prepared by :func:`prepare_for_mi`.
        transform: Initial fixed -> moving transform, updated in place.
        seed: Seed of the random metric sampling. SimpleITK reads a seed of 0 as "seed from the
            wall clock", which made every run differ; ``seed`` is passed on as ``seed + 1``.
        threads: Threads of the registration (``None``: SimpleITK's global default). With more
            than one thread ITK's registration is not bit-reproducible.

    Returns:
        The final metric value.
    """
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, int(seed) + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate, minStep=1e-3, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(smoothing_sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if threads is not None:
        reg.SetNumberOfThreads(int(threads))
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return float(reg.GetMetricValue())


def mi_register(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
    kind: str = "rigid",
    fixed_modality: str = "CT",
    moving_modality: str = "CT",
    seed: int = 0,
    iterations: int = 60,
    spacing_mm: float = 3.0,
    learning_rate: float = 0.5,
    shrink_factors: tuple[int, ...] = (1,),
    smoothing_sigmas: tuple[float, ...] = (0.0,),
    sampling: float = 0.05,
    threads: int | None = None,
) -> sitk.Transform:
    """A short Mattes-MI registration started from ``initial`` (fixed -> moving).

    The defaults are a refinement: one level at ``spacing_mm``, small first step, few
    iterations, so a good start stays in its basin (``sampling``: the share of voxels of the
    random metric sampling; 25 % instead of 5 % changed the TRE by at most 0.5 mm in a check
    on eight refinements of two CTs, at 2-4x the time).

    Returns:
        A new :class:`sitk.Euler3DTransform` (``kind="rigid"``) or :class:`sitk.AffineTransform`.
    """
    if kind not in ("rigid", "affine"):
        raise ValueError(f"unknown transform kind {kind!r}; expected rigid or affine")
    f = prepare_for_mi(fixed, fixed_modality, spacing_mm)
    m = prepare_for_mi(moving, moving_modality, spacing_mm)
    tx = convert(initial, kind)
    mi_stage(f, m, tx, seed, iterations, learning_rate, shrink_factors, smoothing_sigmas, sampling, threads)
    return tx


__all__ = ["mi_register", "mi_stage", "prepare_for_mi"]
