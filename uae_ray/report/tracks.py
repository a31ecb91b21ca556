"""HTML QC report for lesion tracks: each lesion on the baseline beside its tracked position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from uae_ray.report.html import esc, image_strip, write_html
from uae_ray.report.slices import PLANES, render_point
from uae_ray.tasks.points_io import Track

FOV_MM, PIXELS = 180.0, 160
RED, GREEN, ORANGE = (255, 60, 60), (60, 220, 60), (255, 160, 0)


def _with_radius(images: list[Image.Image], radius_mm: float, color: tuple[int, int, int]) -> list[Image.Image]:
    """Draws the lesion's extent (a circle of ``radius_mm``) on each slice image."""
    if not np.isfinite(radius_mm) or radius_mm <= 0:
        return images
    r = radius_mm * PIXELS / FOV_MM
    c = (PIXELS - 1) / 2
    for im in images:
        ImageDraw.Draw(im).ellipse([c - r, c - r, c + r, c + r], outline=color, width=1)
    return images


def _blank(text: str) -> list[Image.Image]:
    out = []
    for _ in PLANES:
        im = Image.new("RGB", (PIXELS, PIXELS), (40, 40, 40))
        ImageDraw.Draw(im).text((8, PIXELS // 2 - 6), text, fill=(255, 160, 0))
        out.append(im)
    return out


def track_report(
    path: str | Path,
    baseline: sitk.Image,
    baseline_modality: str,
    followup: sitk.Image,
    followup_modality: str,
    tracks: list[Track],
    title: str = "uae-ray lesion tracking QC",
    low_score: float = 0.5,
) -> Path:
    """Writes the report: per lesion, the three orthogonal slices through the baseline lesion
    (red; its radius as a circle) and through the tracked point in the follow-up (green; orange
    where the matcher abstained, best estimate shown). Lesions that could not be tracked show
    their error. Scores below ``low_score`` and abstentions are highlighted.
    """
    rows = []
    for t in tracks:
        base_imgs = _with_radius(render_point(baseline, t.baseline_xyz, baseline_modality, RED, FOV_MM, PIXELS),
                                 t.radius_mm, RED)
        if t.error:
            follow_imgs = _blank("not tracked")
            status = f"<br>{esc(t.error)}"
            score = "-"
        else:
            color = GREEN if t.found else ORANGE
            follow_imgs = _with_radius(render_point(followup, t.xyz, followup_modality, color, FOV_MM, PIXELS),
                                       t.radius_mm, color)
            status = "" if t.found else "<br>not found (abstained)"
            score = f"{t.score:.3f}"
        low = t.error or not t.found or not (t.score >= low_score)
        cls = " class='low'" if low else ""
        moved = "" if t.error else f"<br>moved {np.linalg.norm(t.xyz - t.baseline_xyz):.1f} mm"
        where = "" if t.error else f"<br>follow-up ({t.x:.1f}, {t.y:.1f}, {t.z:.1f})"
        radius = f"<br>radius {t.radius_mm:.1f} mm" if np.isfinite(t.radius_mm) else ""
        rows.append(
            f"<tr><td><b>{esc(t.name)}</b><br>baseline ({t.baseline_x:.1f}, {t.baseline_y:.1f}, "
            f"{t.baseline_z:.1f}){radius}{where}{moved}</td>"
            f"<td{cls}>{score}{status}</td>"
            f"<td>{image_strip(base_imgs, [f'baseline {p}' for p in PLANES])}</td>"
            f"<td>{image_strip(follow_imgs, [f'follow-up {p}' for p in PLANES])}</td></tr>"
        )
    n_found = sum(t.found for t in tracks)
    n_error = sum(bool(t.error) for t in tracks)
    intro = (
        f"<p>{len(tracks)} lesion(s): {n_found} found, {len(tracks) - n_found - n_error} abstained, "
        f"{n_error} not tracked. Red: the lesion on the baseline (circle: its radius where given); "
        "green: the tracked centre in the follow-up (orange: the matcher abstained, best estimate shown). "
        f"Scores below {low_score}, abstentions and errors in red. Axial: patient right on the viewer's "
        "left; coronal/sagittal: superior up.</p>"
    )
    table = (
        "<table><tr><th>lesion (LPS mm)</th><th>score</th><th>baseline: axial / coronal / sagittal</th>"
        f"<th>follow-up</th></tr>{''.join(rows)}</table>"
    )
    return write_html(path, title, intro + table)
