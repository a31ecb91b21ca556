"""HTML QC report for registrations: the fixed image and the resampled moving image on the
three orthogonal slices, as a checkerboard and as a colour overlay, with the quality figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image

from uae_ray.report.html import esc, image_strip, write_html
from uae_ray.report.slices import PLANES, window, world_slice

QUALITY_LABELS = {
    "type": "transform",
    "n_points": "grid points (fixed body)",
    "n_correspondences": "correspondences (round-trip consistent)",
    "n_inliers": "inliers",
    "inlier_fraction": "inlier fraction",
    "residual_mm": "median inlier residual (mm)",
    "overlap_fraction": "overlap (fixed grid in moving field of view)",
    "refined": "MI refinement",
    "model_version": "model",
    "seconds": "time (s)",
}


@dataclass
class RegistrationView:
    """One registered pair, for the report.

    Attributes:
        fixed_name, moving_name: How the pair is named (paths, URIs or hashed ids).
        fixed: The fixed image.
        fixed_modality: ``"CT"`` / ``"MR"``.
        resampled: The moving image resampled onto the fixed grid through the transform.
        moving_modality: ``"CT"`` / ``"MR"``.
        quality: Quality figures (:meth:`~uae_ray.tasks.register.RegistrationResult.quality`).
        transform: The transform (fixed -> moving), shown as its parameters.
        center: World point the slices go through (default: the centre of the fixed image).
    """

    fixed_name: str
    moving_name: str
    fixed: sitk.Image
    fixed_modality: str
    resampled: sitk.Image
    moving_modality: str
    quality: dict[str, Any] = field(default_factory=dict)
    transform: sitk.Transform | None = None
    center: np.ndarray | None = None


def _fov(image: sitk.Image) -> float:
    size = np.array(image.GetSize()) * np.array(image.GetSpacing())
    return float(min(max(size.max(), 60.0), 450.0))


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternating square tiles of two equal-shape uint8 slices."""
    rows, cols = np.indices(a.shape)
    mask = ((rows * tiles // a.shape[0]) + (cols * tiles // a.shape[1])) % 2 == 0
    return np.where(mask, a, b)


def overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Colour overlay: fixed in magenta, moving in green (grey where they agree)."""
    return np.stack([a, b, a], axis=-1)


def render_pair(view: RegistrationView, pixels: int = 200) -> list[tuple[str, list[Image.Image]]]:
    """Rows of the report for one pair: fixed, resampled moving, checkerboard, overlay; each a
    list of one image per plane (:data:`PLANES` order)."""
    center = view.center
    if center is None:
        center = np.array(view.fixed.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in view.fixed.GetSize()]))
    fov = _fov(view.fixed)
    rows: dict[str, list[Image.Image]] = {"fixed": [], "moving (resampled)": [], "checkerboard": [], "overlay": []}
    for plane in PLANES:
        f = window(world_slice(view.fixed, center, plane, fov, pixels), view.fixed_modality)
        m = window(world_slice(view.resampled, center, plane, fov, pixels), view.moving_modality)
        rows["fixed"].append(Image.fromarray(f).convert("RGB"))
        rows["moving (resampled)"].append(Image.fromarray(m).convert("RGB"))
        rows["checkerboard"].append(Image.fromarray(checkerboard(f, m)).convert("RGB"))
        rows["overlay"].append(Image.fromarray(overlay(f, m), mode="RGB"))
    return list(rows.items())


def _quality_table(view: RegistrationView) -> str:
    cells = []
    for key, label in QUALITY_LABELS.items():
        if key in view.quality:
            value = view.quality[key]
            if isinstance(value, float):
                value = f"{value:.3f}"
            cells.append(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>")
    if view.transform is not None:
        params = ", ".join(f"{p:.4g}" for p in view.transform.GetParameters())
        cells.append(f"<tr><th>ITK parameters</th><td><code>{esc(params)}</code></td></tr>")
    return f"<table>{''.join(cells)}</table>"


def registration_report(
    path: str | Path, views: list[RegistrationView], title: str = "uae-ray registration QC"
) -> Path:
    """Writes the report: per pair, the quality figures and the fixed image, the resampled
    moving image, their checkerboard and their colour overlay on the axial, coronal and sagittal
    slices through the centre of the fixed image."""
    sections = []
    for view in views:
        rows = "".join(
            f"<tr><td><b>{esc(name)}</b></td><td>{image_strip(images, [f'{name} {p}' for p in PLANES])}</td></tr>"
            for name, images in render_pair(view)
        )
        sections.append(
            f"<h2>{esc(view.fixed_name)} &larr; {esc(view.moving_name)}</h2>{_quality_table(view)}"
            f"<table><tr><th></th><th>axial / coronal / sagittal</th></tr>{rows}</table>"
        )
    intro = (
        f"<p>{len(views)} pair(s). The moving image is resampled onto the fixed grid through the transform "
        "(fixed -> moving, ITK convention). Checkerboard: alternating tiles of fixed and moving, so edges "
        "continue across tiles when the images agree. Overlay: fixed in magenta, moving in green; grey where "
        "they agree. Axial: patient right on the viewer's left; coronal/sagittal: superior up.</p>"
    )
    return write_html(path, title, intro + "".join(sections))


__all__ = ["RegistrationView", "checkerboard", "overlay", "registration_report", "render_pair"]
