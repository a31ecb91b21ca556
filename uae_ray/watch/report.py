"""The HTML run report of a watch cycle: what was new, what ran, what failed and why, with a
QC image per new study (its primary series' mid-coronal slice, the found landmarks and tracked
lesions drawn on it, and the pre-labels' QC images when the prelabel step ran).

Written to ``<out>/watch/reports/cycle-<n>.html`` and copied to ``<out>/watch/report.html``
(the latest). Studies appear by their hashed key only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from uae_ray.report.html import esc, html_page, png_data_uri
from uae_ray.storage import exists, join, read_bytes, write_bytes_atomic

logger = logging.getLogger(__name__)

THUMB_PX = 220
_COLORS = {"landmark": (80, 200, 255), "lesion": (255, 80, 80)}


def coronal_thumbnail(image_uri: str, points: list[dict], pixels: int = THUMB_PX) -> Image.Image:
    """The mid-coronal slice (CT soft-tissue window, or the MR 1-99 % range), the points'
    projections drawn as rings (cyan landmarks, red lesions)."""
    import SimpleITK as sitk

    from uae_ray.storage.images import read_image_uri

    image = read_image_uri(image_uri)
    iso = min(image.GetSpacing())
    array = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    plane = array[:, array.shape[1] // 2, :]  # (z, x)
    lo, hi = ((-160.0, 240.0) if array.min() < -500 else tuple(np.percentile(plane, [1, 99])))
    gray = (np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)[::-1]  # head up
    sz, sx = image.GetSpacing()[2], image.GetSpacing()[0]
    height, width = plane.shape[0] * sz / iso, plane.shape[1] * sx / iso
    scale = pixels / max(height, width)
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    rgb = Image.fromarray(gray).resize(size, Image.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(rgb)
    for p in points:
        i, _, k = image.TransformPhysicalPointToContinuousIndex((p["x"], p["y"], p["z"]))
        u = (i + 0.5) * size[0] / plane.shape[1]
        v = (plane.shape[0] - k - 0.5) * size[1] / plane.shape[0]
        draw.ellipse([u - 4, v - 4, u + 4, v + 4], outline=_COLORS.get(p["kind"], (255, 255, 0)), width=2)
    return rgb


def _qc_images(out: str, scan_id: str) -> str:
    """The prelabel step's QC PNGs of a scan, inlined."""
    from uae_ray.report.html import png_bytes_data_uri
    from uae_ray.storage import list_uris

    folder = join(out, "qc", "prelabel", scan_id)
    if not exists(folder):
        return ""
    uris = sorted(u for u in list_uris(folder) if u.endswith(".png"))
    return "".join(f'<img src="{png_bytes_data_uri(read_bytes(u))}" height="120">' for u in uris[:8])


def _step_cells(steps: dict[str, dict], names: list[str]) -> str:
    cells = []
    for name in names:
        s = steps.get(name)
        if s is None:
            cells.append("<td>-</td>")
            continue
        cls = ' class="low"' if s["status"] == "error" else ""
        why = f"<br><small>{esc(s['error'])}</small>" if s.get("error") else ""
        cells.append(f"<td{cls}>{esc(s['status'])}{why}</td>")
    return "".join(cells)


def write_report(out: str, summary: dict[str, Any], log, ctx, pairs: dict) -> str:
    """Writes the cycle's report (module docstring); returns its URI.

    Args:
        log: The cycle's :class:`~uae_ray.watch.cycle.CycleLog`.
        ctx: The :class:`~uae_ray.watch.steps.StepContext`; pairs: study key -> its pair.
    """
    from uae_ray.watch.steps import found_points

    names: list[str] = []
    for study in log.studies.values():
        names += [n for n in study["steps"] if n not in names]
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in summary.get("seconds", {}).items())
    if summary["source"].startswith("http"):
        found = (f"{summary['studies']} new stable studies since change {summary['since']} "
                 f"(feed at {summary['feed_last']})")
    else:
        found = f"{summary['studies']} new scans ({summary['feed_last']} in the archive)"
    intro = (f"<p>Source {esc(summary['source'])}: {found}; {summary['processed']} processed, "
             f"{summary['failed']} with errors, {summary.get('paired', 0)} paired with a prior. {esc(seconds)}</p>")
    rows = []
    for key, study in log.studies.items():
        meta = study.get("meta")
        picture = ""
        if meta is not None:
            try:
                pts = found_points(ctx, meta, pairs.get(key))
                picture = f'<img src="{png_data_uri(coronal_thumbnail(ctx.scan_uri(meta), pts))}">'
                picture += _qc_images(out, ctx.scan_id(meta))
            except Exception as e:  # a report never fails the cycle
                logger.warning("study %s: no QC image (%s)", key, type(e).__name__)
        when = esc(meta.get("study_date") or "") if meta else ""
        modality = esc(meta.get("modality") or "") if meta else ""
        rows.append(f"<tr><td>{esc(key)}</td><td>{when}</td><td>{modality}</td>{_step_cells(study['steps'], names)}"
                    f"<td><div class='imgs'>{picture}</div></td></tr>")
    head = "".join(f"<th>{esc(n)}</th>" for n in ["study", "date", "modality", *names, "QC"])
    table = f"<table><tr>{head}</tr>{''.join(rows)}</table>" if rows else "<p>Nothing new.</p>"
    page = html_page(f"uae-ray watch, cycle {summary['cycle']}", intro + table).encode("utf-8")
    uri = join(out, "watch", "reports", f"cycle-{summary['cycle']:05d}.html")
    write_bytes_atomic(uri, page)
    write_bytes_atomic(join(out, "watch", "report.html"), page)
    return uri
