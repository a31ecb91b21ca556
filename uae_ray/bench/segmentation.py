"""``uae-ray bench segmentation --protocol curated``: MedLSAM organ segmentation, leave-one-out
over the curated cases (the head-neck cohort ``openkbp_*`` has its own protocol,
:mod:`uae_ray.bench.segmentation_hn`).

Every labelled CT of the data folder is a target in turn. Its organs (anatomical labels of at
least :data:`MIN_VOXELS` voxels; tumours and planning volumes excluded) that at least one
*other patient's* case also has are localized from all those cases as supports (the
localizer of ``uae-ray localize``, default embedding/transfer), and segmented with
segment-anything from per-slice boxes. Prompt modes:

* ``wpl``: the localized 3D box on every slice of its z range (whole-patient localization);
* ``spl``: the organ split into up to 6 parts along z, each localized (sub-patient localization);
* ``gt-wpl`` / ``gt-spl``: the same from the *true* box / true parts (the target's own labels),
  the upper bound of the localization;
* ``gt-slice``: each slice's own tight box of the true mask (the upper bound of the prompt).

Metrics per (target, organ, mode), against the target's labels on its own grid: Dice, HD95
(mm; max over both directions of the 95th percentile of the surface-to-surface distances, NaN
when either mask is empty), predicted and true volume. Time per organ per scan: the wall time of
the localization of the target (embedding included) and of the segmentation, each divided by
the number of organs (SPL's includes the whole-organ localization it shares with WPL and falls
back on). Headline: mean Dice over organs of at least ``min_ml`` ml.

Caveat stated in the output: the default model was trained on the labelled slices of these same
cases (see the model card; its held-out figure is there); the localizer is leave-one-out.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.data.cases import NON_ANATOMICAL, load_cases

logger = logging.getLogger(__name__)

MIN_VOXELS = 50
#: Prompt modes of the benchmark.
MODES = ("wpl", "spl", "gt-wpl", "gt-spl", "gt-slice")
LOCALIZED_MODES = ("wpl", "spl")


# -- metrics --------------------------------------------------------------------------------------


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    s = int(pred.sum()) + int(truth.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / s


def _surface_distances(a: sitk.Image, b: sitk.Image) -> np.ndarray:
    """Distances (mm) from the surface voxels of ``a`` to the surface of ``b``."""
    dist_b = sitk.Abs(sitk.SignedMaurerDistanceMap(b, insideIsPositive=False, squaredDistance=False,
                                                   useImageSpacing=True))
    surf_a = sitk.LabelContour(a, fullyConnected=False)
    d = sitk.GetArrayViewFromImage(dist_b)[sitk.GetArrayViewFromImage(surf_a) > 0]
    return np.asarray(d, dtype=np.float64)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_xyz: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (mm) between two masks (z, y, x) on a grid of the given
    spacing; NaN when either is empty. Computed in the bounding box of both plus a margin."""
    if not pred.any() or not truth.any():
        return float("nan")
    both = np.argwhere(pred | truth)
    lo = np.maximum(both.min(axis=0) - 2, 0)
    hi = np.minimum(both.max(axis=0) + 3, pred.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def img(m: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(m[sl].astype(np.uint8))
        out.SetSpacing(tuple(float(s) for s in spacing_xyz))
        return out

    a, b = img(pred), img(truth)
    d1, d2 = _surface_distances(a, b), _surface_distances(b, a)
    return float(max(np.percentile(d1, 95), np.percentile(d2, 95)))


# -- data -----------------------------------------------------------------------------------------


def anatomical_organs(support) -> list[str]:
    """Anatomical organs of a case with at least :data:`MIN_VOXELS` voxels."""
    out = []
    for name in sorted(set(support.names.values())):
        if name in NON_ANATOMICAL:
            continue
        geo = support.organ(name)
        if geo is not None and geo.n_voxels >= MIN_VOXELS:
            out.append(name)
    return out


def _gt_prompts(target, support, organs: Sequence[str], mode: str) -> list:
    """Ground-truth prompts from the target's own labels (on the oriented grid)."""
    from uae_ray.tasks.segment import (OrganPrompt, mask_index_box, mask_slice_boxes, n_parts, orient,
                                       spl_slice_boxes, split_parts, wpl_slice_boxes)
    from uae_ray.tasks.support import label_of

    lab = sitk.GetArrayFromImage(orient(support.labels))
    spacing_z = target.oriented.GetSpacing()[2]
    out = []
    for organ in organs:
        m = lab == label_of(support.names, organ)
        if mode == "gt-slice":
            boxes = mask_slice_boxes(m)
        elif mode == "gt-wpl":
            boxes = wpl_slice_boxes(mask_index_box(m))
        else:
            zyx = np.argwhere(m)
            n = n_parts(float(zyx[:, 0].max() - zyx[:, 0].min()) * spacing_z)
            world_z = zyx[:, [2, 1, 0]].astype(np.float64) * np.array([0, 0, spacing_z])
            parts = []
            for sel in split_parts(world_z, n):
                if sel.any():
                    p = zyx[sel]
                    parts.append(np.concatenate([p.min(axis=0)[::-1], p.max(axis=0)[::-1]]))
            boxes = spl_slice_boxes(parts)
        out.append(OrganPrompt(organ, boxes))
    return out


# -- the benchmark --------------------------------------------------------------------------------


def segment_target(segmenter, make_localizer, target_id: str, tsup, supports: Sequence, organs: Sequence[str],
                   modes: Sequence[str], modality: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Segments ``organs`` of one labelled target (``tsup``, a Support) in every prompt mode.

    Returns:
        ``(records: one per (organ, mode) with Dice, HD95 (mm), volumes (ml), status, seconds;
        timing: one per mode)``. WPL and SPL share one whole-organ localization when both run.
    """
    from uae_ray.tasks.segment import TargetSlices, localize_both, localize_prompts, segment_prompts
    from uae_ray.tasks.segment.status import default_calibration

    records: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    image = tsup.image
    truth_arr = sitk.GetArrayViewFromImage(tsup.labels)
    vox_ml = float(np.prod(image.GetSpacing())) / 1000.0
    target = TargetSlices(image, modality, segmenter.config)
    logger.info("%s: %d organ(s), %d support(s)", target_id, len(organs), len(supports))
    localized: dict[str, tuple[list, float]] = {}
    if all(m in modes for m in LOCALIZED_MODES):  # one whole-organ localization serves both
        wpl, spl, t_whole, t_parts = localize_both(make_localizer, supports, image, target, organs, modality)
        localized = {"wpl": (wpl, t_whole), "spl": (spl, t_whole + t_parts)}
    for mode in modes:
        t0 = time.perf_counter()
        if mode in localized:
            prompts, t_loc = localized[mode]
        elif mode in LOCALIZED_MODES:
            prompts = localize_prompts(make_localizer, supports, image, target, organs, mode, modality)
            t_loc = time.perf_counter() - t0
        else:
            prompts = _gt_prompts(target, tsup, organs, mode)
            t_loc = time.perf_counter() - t0
        result = segment_prompts(segmenter, target, prompts, calibration=default_calibration())
        t_seg = result.seconds
        pred_arr = sitk.GetArrayViewFromImage(result.labels)
        timing.append({"target": target_id, "mode": mode, "organs": len(organs), "localize_s": t_loc,
                       "segment_s": t_seg, "encode_s": result.encode_seconds, "decode_s": result.decode_seconds,
                       "slices_encoded": result.n_slices_encoded})
        for seg in result.organs:
            label = next(k for k, v in tsup.names.items() if v == seg.name)
            truth = truth_arr == label
            pred = pred_arr == seg.label
            records.append({
                "target": target_id, "organ": seg.name, "mode": mode, "status": seg.status, "quality": seg.quality,
                "volume_ml": float(truth.sum() * vox_ml), "pred_ml": float(pred.sum() * vox_ml),
                "dice": dice(pred, truth), "hd95_mm": hd95(pred, truth, image.GetSpacing()),
                "slices": seg.n_slices, "segment_s": t_seg / len(organs), "localize_s": t_loc / len(organs),
            })
        rows = [r for r in records if r["mode"] == mode]
        logger.info("  %-8s mean Dice %.3f over %d organ(s); localize %.1f s, segment %.1f s", mode,
                    np.mean([r["dice"] for r in rows]), len(rows), t_loc, t_seg)
    return records, timing


def run_segmentation(
    data_dir: str | Path,
    segmenter,
    make_localizer,
    out: str | Path,
    modes: Sequence[str] = MODES,
    min_ml: float = 20.0,
    cases: Sequence[str] | None = None,
    organs: Sequence[str] | None = None,
    localizer_name: str = "embedding/transfer",
    modality: str = "CT",
    support_modality: str | None = None,
) -> dict[str, Any]:
    """Runs the benchmark and writes its JSON.

    Args:
        data_dir: the shared data folder.
        segmenter: a :class:`~uae_ray.tasks.segment.SliceSegmenter`.
        make_localizer: ``supports -> localizer`` (see :func:`~uae_ray.tasks.segment.localize_prompts`).
        out: JSON path.
        modes: prompt modes (:data:`MODES`).
        min_ml: organs at least this large make the headline.
        cases / organs: restrict targets / organs (smoke runs).
        modality: of the targets.
        support_modality: of the supports (default: ``modality``).
    """
    from uae_ray.api.inputs import load_support
    from uae_ray.tasks.support import SupportSpec

    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; expected {MODES}")
    support_modality = support_modality or modality
    all_cases = [c for c in load_cases(data_dir) if c.labels_path is not None
                 and c.modality in (modality, support_modality) and not c.case_id.startswith("openkbp_")]
    supports = {c.case_id: load_support(SupportSpec(str(c.image_path), str(c.labels_path)), modality=c.modality)
                for c in all_cases}
    patient = {c.case_id: c.patient for c in all_cases}
    of_support_modality = {c.case_id for c in all_cases if c.modality == support_modality}
    records: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for case in all_cases:
        if case.modality != modality or (cases and case.case_id not in cases):
            continue
        tsup = supports[case.case_id]
        others = [cid for cid in supports if cid in of_support_modality and patient[cid] != case.patient]
        mine = [o for o in anatomical_organs(tsup) if (not organs or o in organs)
                and any(supports[c].has(o) for c in others)]
        if not mine:
            continue
        use = [supports[c] for c in others if any(supports[c].has(o) for o in mine)]
        rec, tim = segment_target(segmenter, make_localizer, case.case_id, tsup, use, mine, modes, modality)
        records += rec
        timing += tim
    result = {
        "benchmark": "segmentation",
        "data": str(data_dir),
        "model": getattr(segmenter, "version", "?"),
        "localizer": localizer_name,
        "modality": modality,
        "support_modality": support_modality,
        "min_ml": min_ml,
        "modes": list(modes),
        "machine": machine_info(),
        "seconds": time.perf_counter() - t_all,
        "caveat": "the segment-anything model was trained on the labelled slices of these cases (see its model "
                  "card for a held-out figure); the localizer is leave-one-out (supports: other patients)",
        "summary": summarize(records, min_ml),
        "per_organ": records,
        "timing": timing,
    }
    write_json(out, result)
    return result


def summarize(records: list[dict[str, Any]], min_ml: float) -> list[dict[str, Any]]:
    """One row per mode: mean Dice (organs >= min_ml, all), median HD95, time per organ."""
    by_mode: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_mode[r["mode"]].append(r)
    out = []
    for mode in MODES:
        rows = by_mode.get(mode)
        if not rows:
            continue
        big = [r for r in rows if r["volume_ml"] >= min_ml]
        hd_big = [r["hd95_mm"] for r in big if np.isfinite(r["hd95_mm"])]
        out.append({
            "mode": mode,
            "n_large": len(big),
            "dice_large": float(np.mean([r["dice"] for r in big])) if big else float("nan"),
            "median_dice_large": float(np.median([r["dice"] for r in big])) if big else float("nan"),
            "hd95_large_median_mm": float(statistics.median(hd_big)) if hd_big else float("nan"),
            "hd95_large_mean_mm": float(np.mean(hd_big)) if hd_big else float("nan"),
            "empty_large": sum(1 for r in big if r["pred_ml"] == 0.0),  # no voxel predicted (HD95 NaN)
            "n_all": len(rows),
            "dice_all": float(np.mean([r["dice"] for r in rows])),
            "localize_s_per_organ": float(np.mean([r["localize_s"] for r in rows])),
            "segment_s_per_organ": float(np.mean([r["segment_s"] for r in rows])),
        })
    return out


def segmentation_table(result: dict[str, Any]) -> str:
    """The summary as a plain-text table."""
    cols = ["mode", "n_large", "dice_large", "median_dice_large", "hd95_large_median_mm", "empty_large", "n_all", "dice_all",
            "localize_s_per_organ", "segment_s_per_organ"]
    return format_table(result["summary"], cols)


def per_organ_table(result: dict[str, Any], min_ml: float | None = None) -> str:
    """Dice per (target, organ) and mode, organs of at least ``min_ml``."""
    min_ml = result.get("min_ml", 20.0) if min_ml is None else min_ml
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in result["per_organ"]:
        if r["volume_ml"] < min_ml:
            continue
        row = cells.setdefault((r["target"], r["organ"]), {"target": r["target"], "organ": r["organ"],
                                                           "ml": round(r["volume_ml"], 1)})
        row[r["mode"]] = r["dice"]
        row[f"hd95 {r['mode']}"] = r["hd95_mm"]
    modes = [m for m in MODES if any(m in row for row in cells.values())]
    return format_table(list(cells.values()), ["target", "organ", "ml", *modes, *(f"hd95 {m}" for m in modes)])


__all__ = ["MODES", "dice", "hd95", "per_organ_table", "run_segmentation", "segment_target", "segmentation_table",
           "summarize"]
