"""HTML QC report for organ label maps (``cohort prelabel``): each organ's mask contour drawn on
the three orthogonal world-space slices through the mask's centroid (see
:mod:`uae_ray.report.slices`: axial with patient right on the viewer's left, coronal and
sagittal with superior up).

Rendering (:func:`render_mask`, :func:`mask_strip_png`) runs where the scan is in memory (a
cohort worker) and gives one small PNG per organ; the page (:func:`prelabel_report`) is put
together from those PNGs and the index rows, with the images inlined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from tqdm import tqdm

from uae_ray.report.html import esc, png_bytes, png_bytes_data_uri, write_html
from uae_ray.report.slices import PLANES, annotate, window, world_slice

CONTOUR = (60, 220, 60)
#: Smallest field of view of a slice (mm); larger organs get 1.4 x their extent.
MIN_FOV_MM = 120.0
PIXELS = 160
GAP = 2


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary of a 2D boolean mask: its pixels with a 4-neighbour outside it."""
    m = np.asarray(mask, dtype=bool)
    pad = np.pad(m, 1, constant_values=False)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return m & ~interior


def organ_view(labels: sitk.Image, label: int) -> tuple[np.ndarray, float] | None:
    """The organ's centroid (world, LPS mm) and a field of view (mm) that fits it; None when the
    label map has no voxel of ``label``."""
    from uae_ray.volume import Grid

    zyx = np.argwhere(sitk.GetArrayViewFromImage(labels) == label)
    if len(zyx) == 0:
        return None
    world = Grid.from_image(labels).index_to_world(zyx[:, ::-1].astype(np.float64))
    extent = float((world.max(axis=0) - world.min(axis=0)).max())
    return world.mean(axis=0), max(MIN_FOV_MM, 1.4 * extent + 20.0)


def render_mask(
    image: sitk.Image,
    labels: sitk.Image,
    label: int,
    modality: str = "CT",
    color: tuple[int, int, int] = CONTOUR,
    center: np.ndarray | None = None,
    fov_mm: float | None = None,
    pixels: int = PIXELS,
) -> list[Image.Image]:
    """The three orthogonal slices through ``center`` (default: the organ's centroid) with the
    contour of ``labels == label`` drawn in ``color``.

    Args:
        image: the scan.
        labels: a label map in the same world space (any grid; sampled nearest-neighbour).
        label: the organ's value.
        fov_mm: side of each slice (default: fits the organ, at least :data:`MIN_FOV_MM`).

    Returns:
        One RGB image per plane, in :data:`~uae_ray.report.slices.PLANES` order (an empty
        list when the organ has no voxel and no ``center`` is given).
    """
    if center is None or fov_mm is None:
        view = organ_view(labels, label)
        if view is None and center is None:
            return []
        center = view[0] if center is None else center
        fov_mm = fov_mm or (view[1] if view is not None else MIN_FOV_MM)
    images = []
    for plane in PLANES:
        gray = window(world_slice(image, center, plane, fov_mm, pixels), modality)
        lab = world_slice(labels, center, plane, fov_mm, pixels, sitk.sitkNearestNeighbor)
        rgb = np.stack([gray] * 3, axis=-1)
        rgb[contour(lab == label)] = color
        images.append(annotate(Image.fromarray(rgb), plane, fov_mm))
    return images


def mask_strip_png(images: Sequence[Image.Image]) -> bytes:
    """The images side by side (``GAP`` pixels apart) as PNG bytes."""
    width = sum(im.width for im in images) + GAP * max(len(images) - 1, 0)
    height = max(im.height for im in images)
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width + GAP
    return png_bytes(strip)


def _fmt_quality(row: dict) -> str:
    """`` (quality 0.93)`` where the row has a finite quality, else ""."""
    q = row.get("quality")
    return f" (quality {q:.2f})" if q is not None and q == q else ""


def _fmt_box(row: Mapping) -> str:
    values = [row.get(k) for k in ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")]
    return ", ".join("nan" if v is None or not np.isfinite(v) else f"{v:.1f}" for v in values)


def prelabel_report(
    path: str | Path,
    rows: Sequence[Mapping],
    images: Mapping[tuple[str, int], bytes],
    title: str = "uae-ray cohort prelabel QC",
    note: str = "",
    ids_note: str = "Scans are named by their hashed scan id (the manifest maps it to the file).",
) -> Path:
    """Writes the report: a row per (scan, organ) of the prelabel index with its status, volume,
    box and the PNG of :func:`mask_strip_png` (``images[(scan_id, label)]``) where there is one.

    Args:
        rows: index rows (dicts with the :data:`~uae_ray.storage.schemas.PRELABEL` columns), in
            display order; the rows of one scan together.
        images: PNG bytes per ``(scan_id, label)``.
        note: extra HTML for the introduction.
    """
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    body = []
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["scan_id"] != r["scan_id"]
        png = images.get((r["scan_id"], int(r["label"])))
        img = f'<img src="{png_bytes_data_uri(png)}" alt="{esc(r["organ"])}">' if png else ""
        ok = r["status"] == "ok"
        cls = "" if ok else " class='low'"
        volume = f"{r['volume_ml']:.1f} ml, {r['voxels']} voxels" if r["voxels"] else ""
        scan_cell = f"<b>{esc(r['scan_id'])}</b>" if first else ""
        body.append(
            f"<tr><td>{scan_cell}</td><td>{esc(r['label'])}: <b>{esc(r['organ'])}</b><br>{volume}"
            f"<br>box ({_fmt_box(r)})</td><td{cls}>{esc(r['status'])}{_fmt_quality(r)}<br>{esc(r.get('message') or '')}</td>"
            f"<td>{img}</td></tr>"
        )
    n_scans = len({r["scan_id"] for r in rows})
    summary = ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.items()))
    intro = (
        f"<p>{n_scans} scan(s), {len(rows)} organ row(s): {summary}. Green: the contour of the organ's mask "
        "on the three orthogonal slices through its centroid (axial: patient right on the viewer's left; "
        "coronal / sagittal: superior up). Boxes: the localized xmin, ymin, zmin, xmax, ymax, zmax (LPS mm). "
        f"{ids_note}</p>{note}"
    )
    table = ("<table><tr><th>scan</th><th>organ</th><th>status</th><th>axial / coronal / sagittal</th></tr>"
             f"{''.join(body)}</table>")
    return write_html(path, title, intro + table)


def segmentation_report(path: str | Path, image: sitk.Image, modality: str, result, prompts: Sequence,
                        name: str) -> Path:
    """The QC report of one ``uae-ray segment`` run: a row per organ (status, volume, localized
    box, contour on three slices), the layout of :func:`prelabel_report`.

    Args:
        result: the :class:`~uae_ray.tasks.segment.SegmentationResult`.
        prompts: its :class:`~uae_ray.tasks.segment.OrganPrompt` per organ (the boxes).
        name: the target's name in the report (its path as the user gave it).
    """
    rows, images = [], {}
    for o, prompt in tqdm(list(zip(result.organs, prompts)), desc="report", unit="organ", disable=None, leave=False):
        box = np.asarray(prompt.box_world, dtype=float)
        rows.append({"scan_id": name, "label": o.label, "organ": o.name, "status": o.status if o.n_voxels or
                     o.status != "ok" else "not_found", "quality": o.quality, "message": o.message,
                     "volume_ml": float(o.volume_ml),
                     "voxels": int(o.n_voxels), **dict(zip(("xmin", "ymin", "zmin", "xmax", "ymax", "zmax"), box))})
        views = render_mask(image, result.labels, o.label, modality) if o.n_voxels else []
        if views:
            images[(name, o.label)] = mask_strip_png(views)
    return prelabel_report(path, rows, images, title="uae-ray segment QC", ids_note="")


__all__ = ["contour", "mask_strip_png", "organ_view", "prelabel_report", "render_mask", "segmentation_report"]
