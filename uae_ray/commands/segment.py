"""``uae-ray segment``: organ label map of a target from k annotated support scans (MedLSAM).

The organs are localized in the target (``uae-ray localize``'s localizers, :mod:`uae_ray.tasks.localize`),
their 3D boxes become per-slice 2D boxes (SPL by default, or WPL) and segment-anything segments
every slice (:mod:`uae_ray.tasks.segment`). Output (DESIGN.md contract): a NIfTI label map on the
target's grid, label k = the k-th organ of ``--organs``, and the sidecar
``<OUT minus .nii.gz>.json`` ``{"1": "liver", ...}``. An organ that cannot be localized stays
empty in the map (a warning names it) and the others are still segmented.
"""

from __future__ import annotations

import logging
import time

from uae_ray.volume.errors import one_line

logger = logging.getLogger(__name__)


def run(
    supports: list[str],
    target: str,
    organs: str,
    out: str,
    label_names: str | None = None,
    boxes: str = "spl",
    method: str = "embedding",
    embedding_mode: str | None = None,
    triton_url: str | None = None,
    checkpoint: str | None = None,
    medlam_checkpoint: str | None = None,
    sam_checkpoint: str | None = None,
    sam_kind: str | None = None,
    modality: str | None = None,
    dicom_seg: str | None = None,
    device: str | None = None,
    report: str | None = None,
) -> int:
    """Runs the verb (with ``dicom_seg``: also a DICOM SEG over the target DICOM series).

    Returns:
        0 when the label map was written (organs that could not be localized are empty), 1 when
        it was written but a support could not be used, 2 when nothing could be done
        (unreadable target, no usable support, no organ named, model not loadable).
    """
    from uae_ray.api.models import make_localizer_factory, make_segmenter
    from uae_ray.commands.localize import load_inputs
    from uae_ray.api.outputs import write_output, write_segmentation
    from uae_ray.tasks.segment import TargetSlices, localize_prompts, segment_prompts
    from uae_ray.tasks.segment.status import default_calibration

    if dicom_seg and _is_image_file(target):
        logger.error("%s: --dicom-seg needs a DICOM series folder as --target (the SEG references the series' "
                     "instances); this is an image file", target)
        return 2
    inputs = load_inputs(supports, target, organs, label_names, modality)
    if inputs is None:
        return 2
    names, loaded, failed, image, target_modality = inputs
    try:
        segmenter = make_segmenter(triton_url, sam_checkpoint, sam_kind, device)
        factory = make_localizer_factory(method, triton_url, checkpoint, medlam_checkpoint, embedding_mode,
                                         device=device)
        config = segmenter.config
    except (OSError, ValueError, RuntimeError) as e:
        logger.error("%s", one_line(e))
        return 2
    t0 = time.perf_counter()
    prepared = TargetSlices(image, target_modality, config)
    prompts = localize_prompts(factory, loaded, image, prepared, names, boxes, target_modality)
    t1 = time.perf_counter()
    result = segment_prompts(segmenter, prepared, prompts, calibration=default_calibration())
    label_path, sidecar = write_segmentation(result, out)
    for o in result.organs:
        if o.status != "ok":
            logger.warning("%s [%s]", o.message or o.name, o.status)
        else:
            logger.info("label %d %s: %d slices, %.1f ml, quality %.2f [ok]", o.label, o.name, o.n_slices, o.volume_ml,
                        o.quality)
    logger.info("wrote %s and %s (%d organ(s), %s boxes, %s localizer, model %s): localization %.1f s, "
                "segmentation %.1f s (%d slices encoded)", label_path, sidecar, len(names), boxes.upper(), method,
                result.model_version, t1 - t0, result.seconds, result.n_slices_encoded)
    if report:
        from uae_ray.report.masks import segmentation_report

        t2 = time.perf_counter()
        write_output(report, lambda path: segmentation_report(path, image, target_modality, result, prompts, target))
        logger.info("wrote report %s (%.1f s)", report, time.perf_counter() - t2)
    if dicom_seg and not _write_seg(result, image, target, dicom_seg):
        return 1
    return 1 if failed else 0


def _is_image_file(uri: str) -> bool:
    from uae_ray.storage.images import IMAGE_SUFFIXES

    return str(uri).lower().endswith(IMAGE_SUFFIXES)


def _write_seg(result, image, target: str, out: str) -> bool:
    """The DICOM SEG of ``result`` over the target series; False (logged) when it cannot be written."""
    from uae_ray.storage.images import image_pseudonym
    from uae_ray.storage.uri import uri_hash
    from uae_ray.api.outputs import write_segmentation_seg
    from uae_ray.volume import VolumeError

    pseudonym = image_pseudonym(image, uri_hash(str(target).rstrip("/")))
    try:
        write_segmentation_seg(result, target, out, pseudonym)
    except (VolumeError, ValueError, OSError) as e:
        logger.error("%s: DICOM SEG not written: %s", out, one_line(e))
        return False
    logger.info("wrote DICOM SEG %s (patient pseudonym %s)", out, pseudonym)
    return True
