"""Orthogonal slices through a world point, rendered to small PIL images for QC reports.

Slices are resampled in world space (LPS), so they show the same orientation for every scan
whatever its stored direction: axial (patient right on the viewer's left, anterior up),
coronal (superior up) and sagittal (anterior on the left, superior up).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")

# In-plane axes (columns, rows) of each plane as LPS unit vectors.
_AXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def world_slice(
    image: sitk.Image, center: np.ndarray, plane: Plane, fov_mm: float = 180.0, pixels: int = 160,
    interpolator: int = sitk.sitkLinear,
) -> np.ndarray:
    """Resamples a 2D slice through ``center``.

    Args:
        image: 3D image (any direction).
        center: (3,) world point, x, y, z (LPS, mm), at the slice centre.
        plane: which orthogonal plane.
        fov_mm: side of the square field of view in mm.
        pixels: side of the output in pixels.
        interpolator: SimpleITK interpolator (``sitk.sitkNearestNeighbor`` for label maps).

    Returns:
        (pixels, pixels) float32 array, rows along the plane's vertical axis; NaN outside the image.
    """
    a, b = (np.asarray(v) for v in _AXES[plane])
    c = np.cross(a, b)
    spacing = fov_mm / pixels
    origin = np.asarray(center, dtype=float) - (pixels - 1) / 2 * spacing * (a + b)
    ref = sitk.Image([pixels, pixels, 1], sitk.sitkFloat32)
    ref.SetSpacing((spacing, spacing, 1.0))
    ref.SetOrigin(tuple(origin))
    ref.SetDirection(tuple(np.stack([a, b, c], axis=1).ravel()))
    nan = float("nan")
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(), interpolator, nan)
    return sitk.GetArrayFromImage(out)[0]


#: CT display windows (level, width) in HU, as radiologists read them.
CT_WINDOWS: dict[str, tuple[float, float]] = {"soft tissue": (50.0, 600.0), "lung": (-600.0, 1500.0),
                                               "bone": (400.0, 1800.0)}

#: Orientation letters at the (left, right, top, bottom) edges of each plane.
_LETTERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I"),
}


def tissue_at(image: sitk.Image, point: np.ndarray, modality: str) -> str:
    """The CT window for a point: ``lung`` in air-filled tissue (< -400 HU), ``bone`` in bone
    (> 250 HU), else ``soft tissue`` (always for MR, and outside the image)."""
    if modality.upper() != "CT":
        return "soft tissue"
    idx = image.TransformPhysicalPointToIndex(tuple(float(v) for v in point))
    if not all(0 <= i < n for i, n in zip(idx, image.GetSize())):
        return "soft tissue"
    value = float(image[idx])
    return "lung" if value < -400 else "bone" if value > 250 else "soft tissue"


def window(slice_: np.ndarray, modality: str, tissue: str = "soft tissue") -> np.ndarray:
    """Maps intensities to uint8: CT with the window of ``tissue`` (:data:`CT_WINDOWS`), MR by
    percentiles (1-99 %)."""
    finite = np.isfinite(slice_)
    if modality.upper() == "CT":
        level, width = CT_WINDOWS[tissue]
        lo, hi = level - width / 2, level + width / 2
    elif finite.any():
        lo, hi = np.percentile(slice_[finite], [1, 99])
    else:
        lo, hi = 0.0, 1.0
    out = np.clip((np.nan_to_num(slice_, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    return (out * 255).astype(np.uint8)


def annotate(rgb: Image.Image, plane: Plane, fov_mm: float, label: str = "") -> Image.Image:
    """Draws the orientation letters at the four edges, a 50 mm scale bar (bottom left) and an
    optional label (top left, e.g. the window) on a rendered slice; returns it."""
    draw = ImageDraw.Draw(rgb)
    w, h = rgb.size
    left, right, top, bottom = _LETTERS[plane]
    yellow = (255, 230, 80)
    draw.text((2, h // 2 - 5), left, fill=yellow)
    draw.text((w - 9, h // 2 - 5), right, fill=yellow)
    draw.text((w // 2 - 3, 1), top, fill=yellow)
    draw.text((w // 2 - 3, h - 12), bottom, fill=yellow)
    bar = 50.0 * w / fov_mm
    draw.line([6, h - 5, 6 + bar, h - 5], fill=yellow, width=2)
    draw.text((8 + bar, h - 14), "50 mm", fill=yellow)
    if label:
        draw.text((2, 1), label, fill=yellow)
    return rgb


def render_point(
    image: sitk.Image,
    point: np.ndarray,
    modality: str = "CT",
    color: tuple[int, int, int] = (255, 60, 60),
    fov_mm: float = 180.0,
    pixels: int = 160,
) -> list[Image.Image]:
    """Renders the three orthogonal slices through ``point`` with the point drawn as a ring, in
    the CT window of the tissue there (:func:`tissue_at`), with orientation letters and a scale bar.

    Returns:
        One RGB image per plane, in :data:`PLANES` order.
    """
    images = []
    tissue = tissue_at(image, point, modality)
    label = tissue if modality.upper() == "CT" else ""
    for plane in PLANES:
        gray = window(world_slice(image, point, plane, fov_mm, pixels), modality, tissue)
        rgb = annotate(Image.fromarray(gray).convert("RGB"), plane, fov_mm, label if plane == "axial" else "")
        draw = ImageDraw.Draw(rgb)
        c, r = (pixels - 1) / 2, max(3, pixels // 30)
        draw.ellipse([c - r, c - r, c + r, c + r], outline=color, width=2)
        draw.line([c - 3 * r, c, c - 1.5 * r, c], fill=color, width=1)
        draw.line([c + 1.5 * r, c, c + 3 * r, c], fill=color, width=1)
        images.append(rgb)
    return images
