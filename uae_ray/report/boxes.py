"""HTML QC report for organ boxes: predicted (green) and ground-truth (red) boxes drawn on the
three orthogonal slices through the predicted box's centre (world-space slices, see
:mod:`uae_ray.report.slices`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from uae_ray.report.html import esc, image_strip, write_html
from uae_ray.report.slices import PLANES, _AXES, annotate, window, world_slice

PREDICTED = (60, 220, 60)
TRUTH = (255, 60, 60)
MARKED = (255, 160, 0)


def box_rectangle(box: np.ndarray, center: np.ndarray, plane: str, fov_mm: float, pixels: int) -> tuple[float, ...]:
    """Pixel rectangle ``(col0, row0, col1, row1)`` of a world box on a slice made by
    :func:`~uae_ray.report.slices.world_slice` through ``center``."""
    a, b = (np.asarray(v, dtype=float) for v in _AXES[plane])
    spacing = fov_mm / pixels
    origin = np.asarray(center, dtype=float) - (pixels - 1) / 2 * spacing * (a + b)
    corners = np.array([[x, y, z] for x in box[[0, 3]] for y in box[[1, 4]] for z in box[[2, 5]]])
    cols = (corners - origin) @ a / spacing
    rows = (corners - origin) @ b / spacing
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def render_boxes(
    image: sitk.Image,
    boxes: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
    modality: str = "CT",
    pixels: int = 200,
    center: np.ndarray | None = None,
) -> list[Image.Image]:
    """The three orthogonal slices through ``center`` (default: the first box's centre) with
    every ``(box, colour)`` drawn as a rectangle. The field of view fits the boxes."""
    finite = [np.asarray(b, dtype=float) for b, _ in boxes if np.all(np.isfinite(b))]
    if center is None:
        center = 0.5 * (finite[0][:3] + finite[0][3:]) if finite else np.asarray(
            image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    extent = max([180.0] + [1.3 * float(np.max(np.abs(np.concatenate([b[:3], b[3:]]) - np.tile(center, 2))) * 2)
                            for b in finite])
    images = []
    for plane in PLANES:
        gray = window(world_slice(image, center, plane, extent, pixels), modality)
        rgb = annotate(Image.fromarray(gray).convert("RGB"), plane, extent)
        draw = ImageDraw.Draw(rgb)
        for box, color in boxes:
            box = np.asarray(box, dtype=float)
            if not np.all(np.isfinite(box)):
                continue
            c0, r0, c1, r1 = box_rectangle(box, center, plane, extent, pixels)
            draw.rectangle([c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)], outline=color, width=2)
        images.append(rgb)
    return images


def box_report(
    path: str | Path,
    image: sitk.Image,
    modality: str,
    boxes: Sequence,
    truth: Mapping[str, Sequence[float]] | None = None,
    title: str = "uae-ray localize QC",
) -> Path:
    """Writes the report: one row per :class:`~uae_ray.tasks.localize.OrganBox` with its status,
    score and the slices (predicted box green, orange when the row is marked; ground truth red)."""
    from uae_ray.tasks.localize import box_iou, wall_distance

    rows = []
    for b in boxes:
        pred = np.asarray(b.box, dtype=float)
        color = PREDICTED if b.status in ("ok", "partial_fov") else MARKED
        drawn = [(pred, color)]
        gt = np.asarray(truth[b.name], dtype=float) if truth and b.name in truth else None
        metrics = ""
        if gt is not None:
            drawn.append((gt, TRUTH))
            metrics = f"<br>IoU {box_iou(pred, gt):.2f}, wall {wall_distance(pred, gt):.1f} mm"
        if np.all(np.isfinite(pred)) or gt is not None:
            center = 0.5 * (pred[:3] + pred[3:]) if np.all(np.isfinite(pred)) else 0.5 * (gt[:3] + gt[3:])
            strip = image_strip(render_boxes(image, drawn, modality, center=center), [f"{p}" for p in PLANES])
        else:
            strip = ""
        coords = ", ".join("nan" if not np.isfinite(v) else f"{v:.1f}" for v in pred)
        cls = "" if b.status in ("ok", "partial_fov") else " class='low'"
        rows.append(
            f"<tr><td><b>{esc(b.name)}</b><br>({coords})</td>"
            f"<td{cls}>{esc(b.status)}<br>score {b.score:.3f}<br>{esc(b.method)}, {b.n_supports} support(s)"
            f"{metrics}<br>{esc(b.message)}</td><td>{strip}</td></tr>"
        )
    intro = (
        f"<p>{len(boxes)} organ(s). Green: the predicted box (orange: the row is marked); red: the "
        "ground-truth box. Slices through the predicted box's centre; axial: patient right on the "
        "viewer's left; coronal/sagittal: superior up. Boxes: xmin, ymin, zmin, xmax, ymax, zmax (LPS mm).</p>"
    )
    table = (f"<table><tr><th>organ (box, LPS mm)</th><th>status</th><th>axial / coronal / sagittal</th></tr>"
             f"{''.join(rows)}</table>")
    return write_html(path, title, intro + table)


__all__ = ["box_rectangle", "box_report", "render_boxes"]
