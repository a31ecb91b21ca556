"""HTML QC report for landmark detections: the template's point beside each detection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.report.html import esc, image_strip, write_html
from uae_ray.report.slices import PLANES, render_point
from uae_ray.tasks.points_io import Detection, NamedPoints


@dataclass
class TargetView:
    """A target scan and its detections, for the report."""

    name: str
    image: sitk.Image
    modality: str
    detections: list[Detection]


def landmark_report(
    path: str | Path,
    template: sitk.Image,
    template_modality: str,
    points: NamedPoints,
    targets: list[TargetView],
    title: str = "uae-ray landmark QC",
    low_score: float = 0.5,
) -> Path:
    """Writes the report: per target, per point, the three orthogonal slices through the
    template's point (red) and through the detected point (green).

    Scores below ``low_score`` are highlighted.
    """
    template_imgs = {
        name: render_point(template, xyz, template_modality, color=(255, 60, 60))
        for name, xyz in zip(points.names, points.xyz)
    }
    sections = []
    for target in targets:
        rows = []
        for det in target.detections:
            xyz = np.array([det.x, det.y, det.z])
            color = (60, 220, 60) if det.found else (255, 160, 0)
            found = render_point(target.image, xyz, target.modality, color=color)
            cls = " class='low'" if det.score < low_score or not det.found else ""
            status = "" if det.found else "<br>not found (abstained)"
            rows.append(
                f"<tr><td><b>{esc(det.name)}</b><br>({det.x:.1f}, {det.y:.1f}, {det.z:.1f})</td>"
                f"<td{cls}>{det.score:.3f}{status}</td>"
                f"<td>{image_strip(template_imgs[det.name], [f'template {p}' for p in PLANES])}</td>"
                f"<td>{image_strip(found, [f'target {p}' for p in PLANES])}</td></tr>"
            )
        sections.append(
            f"<h2>{esc(target.name)}</h2><table><tr><th>point (LPS mm)</th><th>score</th>"
            f"<th>template: axial / coronal / sagittal</th><th>detected</th></tr>{''.join(rows)}</table>"
        )
    intro = (
        f"<p>{len(targets)} target scan(s), {len(points)} point(s). Red: the template's point; "
        f"green: the detected point (orange: the matcher abstained, best estimate shown). "
        f"Scores below {low_score} and abstentions in red. Axial: patient right on "
        "the viewer's left; coronal/sagittal: superior up.</p>"
    )
    return write_html(path, title, intro + "".join(sections))
