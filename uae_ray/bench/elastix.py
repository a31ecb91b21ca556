"""elastix baseline (itk-elastix): affine, then B-spline, landmark transfer.

The registration users run: multi-resolution Mattes MI with elastix's default affine and
B-spline parameter maps (adaptive stochastic gradient descent), images prepared like the
SimpleITK baseline (anti-alias smoothing, 3 mm). The template is the *fixed* image, so the
resulting transform maps template points straight to target points (ITK convention; no inverse
of the B-spline is needed).

elastix runs single-threaded: itk-elastix 0.25 crashes (SIGSEGV) in multi-threaded B-spline
registration on these machines (a known upstream issue, InsightSoftwareConsortium/ITKElastix#295).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import SimpleITK as sitk

from uae_ray.tasks.mi import prepare_for_mi as _prepare

PointTransfer = Callable[[np.ndarray], np.ndarray]


def _to_itk(image: sitk.Image):
    import itk

    out = itk.GetImageFromArray(sitk.GetArrayFromImage(image).astype(np.float32))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.GetMatrixFromArray(np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)))
    return out


def _transfer(transform) -> PointTransfer:
    def apply(points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return np.array([list(transform.TransformPoint([float(v) for v in p])) for p in pts]).reshape(-1, 3)

    return apply


def elastix_registration(
    template: sitk.Image,
    target: sitk.Image,
    template_modality: str = "CT",
    target_modality: str = "CT",
    spacing_mm: float = 3.0,
    resolutions: int = 3,
    grid_spacing_mm: float = 20.0,
) -> tuple[dict[str, PointTransfer], dict[str, float]]:
    """Registers ``target`` (moving) to ``template`` (fixed): affine, then B-spline from it.

    Args:
        template: The image the points are given in (fixed).
        target: The image to transfer them to (moving).
        template_modality: ``"CT"`` or ``"MR"`` (intensity preparation).
        target_modality: ``"CT"`` or ``"MR"``.
        spacing_mm: Resampling of both images before registration.
        resolutions: Pyramid levels of each stage.
        grid_spacing_mm: Final B-spline control-point spacing.

    Returns:
        ``({"affine": f, "bspline": g}, {"affine_s": ..., "bspline_s": ...})``: functions that map
        (N, 3) template world points to target world points, and the wall time of each stage.

    Raises:
        ImportError: When itk-elastix is not installed.
        RuntimeError: When elastix fails (its message is kept).
    """
    import itk

    fixed = _to_itk(_prepare(template, template_modality, spacing_mm))
    moving = _to_itk(_prepare(target, target_modality, spacing_mm))
    affine_map = itk.ParameterObject.GetDefaultParameterMap("affine", resolutions)
    affine_map["AutomaticTransformInitialization"] = ["true"]  # start from the image centres
    affine_map["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
    bspline_map = itk.ParameterObject.GetDefaultParameterMap("bspline", resolutions, grid_spacing_mm)
    for m in (affine_map, bspline_map):
        m["RequiredRatioOfValidSamples"] = ["0.05"]  # partial fields of view overlap little at first
    times: dict[str, float] = {}
    transforms: dict[str, PointTransfer] = {}
    params = itk.ParameterObject.New()
    params.AddParameterMap(affine_map)
    t0 = time.perf_counter()
    reg = itk.ElastixRegistrationMethod.New(fixed, moving, parameter_object=params, log_to_console=False,
                                            number_of_threads=1)
    reg.Update()
    times["affine_s"] = time.perf_counter() - t0
    transforms["affine"] = _transfer(reg.GetCombinationTransform())
    params_b = itk.ParameterObject.New()
    params_b.AddParameterMap(bspline_map)
    t0 = time.perf_counter()
    reg_b = itk.ElastixRegistrationMethod.New(
        fixed, moving, parameter_object=params_b, log_to_console=False, number_of_threads=1,
        initial_transform_parameter_object=reg.GetTransformParameterObject(),
    )
    reg_b.Update()
    times["bspline_s"] = time.perf_counter() - t0
    transforms["bspline"] = _transfer(reg_b.GetCombinationTransform())
    return transforms, times


def elastix_available() -> bool:
    """True when itk-elastix can be imported."""
    try:
        import itk  # noqa: F401

        return hasattr(itk, "ElastixRegistrationMethod")
    except ImportError:
        return False


__all__ = ["elastix_available", "elastix_registration"]
