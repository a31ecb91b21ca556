"""Registration baselines for landmark transfer (SimpleITK intensity-based affine)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _prepare(image: sitk.Image, modality: str) -> sitk.Image:
    image = sitk.Cast(image, sitk.sitkFloat32)
    if modality == "CT":
        image = sitk.Clamp(image, sitk.sitkFloat32, -1000.0, 1500.0)
    return image


def affine_registration(
    fixed: sitk.Image, moving: sitk.Image, modality: str = "CT", seed: int = 0, iterations: int = 200
) -> sitk.Transform:
    """Multi-resolution Mattes-MI affine registration (SimpleITK), as a user would run it.

    Initialised by aligning the image centres (geometry), then a rigid stage, then affine.

    Returns:
        The transform mapping fixed-space points to moving-space points (ITK convention).
    """
    f, m = _prepare(fixed, modality), _prepare(moving, modality)
    transform: sitk.Transform = sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    for stage in (sitk.Euler3DTransform, sitk.AffineTransform):
        if stage is sitk.AffineTransform:
            affine = sitk.AffineTransform(3)
            affine.SetCenter(transform.GetCenter())
            affine.SetMatrix(transform.GetMatrix())
            affine.SetTranslation(transform.GetTranslation())
            transform = affine
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.05, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(f, m)
    return transform


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
