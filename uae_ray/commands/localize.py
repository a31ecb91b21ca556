"""``uae-ray localize``: organ boxes in a target from k annotated support scans.

Writes the boxes CSV contract ``name,xmin,ymin,zmin,xmax,ymax,zmax`` (LPS mm, the box of voxel
centres) with extra columns after them: ``score,found,status,method,n_supports,message``.
A row whose organ no support has (``status=no_support``, coordinates ``nan``), or whose box is
outside the target's field of view (``outside_fov`` / ``not_found``), is marked and the other
organs still run.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

from uae_ray.tasks.points_io import write_csv_atomic
from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)

BOX_HEADER = ("name", "xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
BOX_EXTRA = ("score", "found", "status", "method", "n_supports", "message")


def _fmt(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "nan"


def write_boxes_csv(path: str | Path, boxes: list) -> None:
    """Writes :class:`~uae_ray.tasks.localize.OrganBox` rows atomically (contract + extra columns)."""
    rows = [
        (b.name, *(_fmt(float(v)) for v in b.box), _fmt(float(b.score)), str(bool(b.found)).lower(), b.status,
         b.method, b.n_supports, b.message)
        for b in boxes
    ]
    write_csv_atomic(path, BOX_HEADER + BOX_EXTRA, rows)


def read_boxes_csv(path: str | Path) -> dict[str, list[float]]:
    """``{name: [xmin, ymin, zmin, xmax, ymax, zmax]}`` of a boxes CSV (extra columns ignored)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(BOX_HEADER)}")
        return {r["name"]: [float(r[c]) for c in BOX_HEADER[1:]] for r in reader}


def load_inputs(supports: list[str], target: str, organs: str, label_names: str | None, modality: str | None):
    """Organ names, the usable supports, the target image and its modality, for localize/segment.

    Returns:
        ``(names, supports, n_failed, image, target_modality)``, or ``None`` (after one error
        line) when there is nothing to do: no organ named, an organ name that looks like a typo of a
        support's (with the closest name), no usable support, unreadable target.
        A support that cannot be used is logged and counted in ``n_failed``; the others go on.
    """
    from uae_ray.api.inputs import load_supports, parse_organs, read_image_uri
    from uae_ray.volume import detect_modality

    names = parse_organs(organs)
    if not names:
        logger.error("--organs: no organ named")
        return None
    loaded, failed = load_supports(supports, label_names, modality)
    if not loaded:
        logger.error("no usable support scan (%d given)", len(supports))
        return None
    from uae_ray.tasks.support import probable_typos

    typos = probable_typos(loaded, names)
    if typos:  # before any embedding: a typo should not cost a run
        for line in typos:
            logger.error("--organs %s", line)
        return None
    try:
        image = read_image_uri(target)
        target_modality = detect_modality(image, target, modality)
    except Exception as e:
        message = one_line(e)
        logger.error("%s", message if target in message else f"{target}: {message}")
        return None
    return names, loaded, failed, image, target_modality


def run(
    supports: list[str],
    target: str,
    organs: str,
    out: str,
    label_names: str | None = None,
    method: str = "embedding",
    embedding_mode: str | None = None,
    triton_url: str | None = None,
    checkpoint: str | None = None,
    medlam_checkpoint: str | None = None,
    modality: str | None = None,
    report: str | None = None,
    truth: str | None = None,
    device: str | None = None,
) -> int:
    """Runs the verb.

    Returns:
        0 when the CSV was written (rows may be marked), 1 when it was written but a support
        could not be used, 2 when nothing could be done (unreadable target, no usable support,
        no organ named); nothing is written then.
    """
    inputs = load_inputs(supports, target, organs, label_names, modality)
    if inputs is None:
        return 2
    names, loaded, failed, image, target_modality = inputs
    t0 = time.perf_counter()
    from uae_ray.api.models import make_localizer
    from uae_ray.api.outputs import write_output

    try:
        localizer = make_localizer(method, loaded, triton_url, checkpoint, medlam_checkpoint, embedding_mode, device)
    except (OSError, ValueError) as e:
        logger.error("%s", one_line(e))
        return 2
    boxes = localizer.localize(image, names, target_modality)
    for b in boxes:
        if b.status != "ok":
            logger.warning("%s [%s]", b.message or b.name, b.status)
    write_output(out, lambda path: write_boxes_csv(path, boxes))
    n_ok = sum(b.status in ("ok", "partial_fov") for b in boxes)
    logger.info("wrote %d box(es) to %s (%d localized, %d marked; %s, %d support(s), model %s) in %.1f s",
                len(boxes), out, n_ok, len(boxes) - n_ok, method, len(loaded), localizer.model_version,
                time.perf_counter() - t0)
    if report:
        from uae_ray.report.boxes import box_report

        truth_boxes = read_boxes_csv(truth) if truth else None
        write_output(report, lambda path: box_report(path, image, target_modality, boxes, truth_boxes,
                                                      title=f"uae-ray localize QC: {target}"))
        logger.info("wrote report %s", report)
    return 1 if failed else 0
