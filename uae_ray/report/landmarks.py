"""HTML QC report for landmark detections: the template's point beside each detection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

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


def _xyz(v) -> str:
    return "(" + ", ".join(f"{float(c):.1f}" for c in v) + ")"


def landmark_report(
    path: str | Path,
    template: sitk.Image,
    template_modality: str,
    points: NamedPoints,
    targets: list[TargetView],
    title: str = "uae-ray landmark QC",
    low_score: float = 0.5,
) -> Path:
    """Writes the report: the template's points once (three orthogonal slices each, red), then
    per target the detected points (green; orange where the matcher abstained), each with the
    template and the detected coordinates. Scores below ``low_score`` are highlighted.
    """
    template_rows = []
    for name, xyz in zip(points.names, points.xyz):
        strip = image_strip(render_point(template, xyz, template_modality, color=(255, 60, 60)),
                            [f"template {p}" for p in PLANES])
        template_rows.append(f"<tr id='t-{esc(name)}'><td><b>{esc(name)}</b><br>{_xyz(xyz)}</td><td>{strip}</td></tr>")
    template_xyz = dict(zip(points.names, points.xyz))
    sections = [f"<h2>template</h2><table><tr><th>point (LPS mm)</th><th>axial / coronal / sagittal</th></tr>"
                f"{''.join(template_rows)}</table>"]
    for target in tqdm(targets, desc="report", unit="scan", disable=None, leave=False):
        rows = []
        for det in target.detections:
            xyz = np.array([det.x, det.y, det.z])
            color = (60, 220, 60) if det.found else (255, 160, 0)
            found = render_point(target.image, xyz, target.modality, color=color)
            cls = " class='low'" if det.score < low_score or not det.found else ""
            status = "" if det.found else "<br>not found (abstained)"
            rows.append(
                f"<tr><td><b><a href='#t-{esc(det.name)}'>{esc(det.name)}</a></b><br>template "
                f"{_xyz(template_xyz.get(det.name, [np.nan] * 3))}<br>detected {_xyz(xyz)}</td>"
                f"<td{cls}>{det.score:.3f}{status}</td>"
                f"<td>{image_strip(found, [f'detected {p}' for p in PLANES])}</td></tr>"
            )
        sections.append(
            f"<h2>{esc(target.name)}</h2><table><tr><th>point (LPS mm)</th><th>score</th>"
            f"<th>detected: axial / coronal / sagittal</th></tr>{''.join(rows)}</table>"
        )
    intro = (
        f"<p>{len(targets)} target scan(s), {len(points)} point(s). Red: the template's point (shown once, "
        f"at the top; the point names link to it); green: the detected point (orange: the matcher abstained, "
        f"best estimate shown). Scores below {low_score} and abstentions in red. Slices are in world space "
        "with orientation letters (axial: patient right on the viewer's left) and a 50 mm bar; CT is shown "
        "in the window of the tissue at the point (soft tissue, lung or bone, named on the axial slice).</p>"
    )
    return write_html(path, title, intro + "".join(sections))
