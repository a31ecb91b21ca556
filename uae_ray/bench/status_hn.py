"""``uae-ray bench segmentation --status`` / ``--calibrate-status``: can a pre-label's status be trusted?

Targets of one side of the split (``train`` to fit the calibration, ``test`` to measure it):

* ``n_targets`` head-neck CTs (``openkbp_*``; on the train side none of the supports), each
  segmented whole (``full``) and with half of its slices cut away (``upper`` / ``lower``
  alternately: the structures of the other half leave the view);
* ``n_other`` scans of another body region of the same side (the thigh CTs of the CT-MR pairs,
  ``sts_*``), where none of the seven structures is.

Supports: the first ``k`` of :func:`~uae_ray.bench.localization_hn.draw_cases` (training
patients). Every structure the supports have is localized (SPL) and segmented in every target
variant. A structure is *present* when it is whole in the variant's view, *absent* when none
of its voxels is (or on another region); structures cut by the crop or without a label in a
whole scan are left out. Per mask: Dice (absent: 0), the figures of
:mod:`uae_ray.tasks.segment.status`, the status before and after grading.

Figures: share of ``ok`` masks with Dice >= 0.5 (target >= 95 %), share of absent structures
``ok`` (<= 5 %), share of present structures ``ok`` (>= 80 %).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.bench.localization_hn import HEAD_NECK, draw_cases
from uae_ray.bench.segmentation import dice
from uae_ray.data.cases import Case, load_cases

logger = logging.getLogger(__name__)

OTHER_REGION_PREFIX = "sts_"


def _rank(seed: int, case_id: str) -> str:
    return hashlib.sha256(f"status-hn:{seed}:{case_id}".encode()).hexdigest()


def status_targets(data_dir: str | Path, split: str, side: str, n_targets: int, n_other: int, exclude: Sequence[str],
                   seed: int = 0) -> tuple[list[Case], list[Case]]:
    """``(head-neck targets, other-region targets)`` of one side of the split (seeded draws)."""
    from uae_ray.split import load_split

    the_split = load_split(split)
    on_side = lambda c: the_split.is_test(c.patient) == (side == "test")  # noqa: E731
    cases = [c for c in load_cases(data_dir, "CT") if on_side(c) and c.case_id not in exclude]
    hn = sorted((c for c in cases if c.case_id.startswith("openkbp_") and c.labels_path), key=lambda c: _rank(seed, c.case_id))
    other = sorted((c for c in cases if c.case_id.startswith(OTHER_REGION_PREFIX)), key=lambda c: _rank(seed, c.case_id))
    if len(hn) < n_targets or len(other) < n_other:
        raise ValueError(f"{data_dir}: {len(hn)} head-neck and {len(other)} other-region CTs on the {side} side; "
                         f"{n_targets} and {n_other} asked")
    return hn[:n_targets], other[:n_other]


def _variants(case: Case, index: int) -> list[tuple[str, sitk.Image, np.ndarray | None, dict[int, str]]]:
    """``(variant, image, label array (Z, Y, X) or None, names)`` of one target."""
    from uae_ray.bench.cross_patient import crop_z
    from uae_ray.volume import read_image, read_labels

    image = read_image(case.image_path)
    if case.case_id.startswith(OTHER_REGION_PREFIX):
        return [("other", image, None, {})]
    labels = read_labels(case.labels_path)
    names = {int(k): v for k, v in case.meta.get("labels", {}).items()}
    upper = index % 2 == 0
    cropped, lab = crop_z(image, labels, upper)
    return [("full", image, sitk.GetArrayFromImage(labels), names), ("upper" if upper else "lower", cropped, lab, names)]


def _truth(organ: str, variant: str, full: np.ndarray | None, lab: np.ndarray | None, names: dict[int, str],
           whole: set[str]) -> str | None:
    """``present`` / ``absent`` / None (left out) for one structure in one variant."""
    if lab is None:
        return "absent"
    ids = [k for k, v in names.items() if v == organ]
    if not ids or organ not in whole:  # not contoured, or cut by the scan's own view: unknown
        return None
    n_full, n_here = int((full == ids[0]).sum()), int((lab == ids[0]).sum())
    if n_full == 0:
        return None
    return "present" if n_here == n_full else "absent" if n_here == 0 else None


def run_status_hn(
    data_dir: str | Path,
    segmenter,
    make_localizer: Callable[[Sequence], object],
    out: str | Path,
    side: str,
    calibration=None,
    split: str = "patients-v1",
    n_targets: int = 20,
    n_other: int = 4,
    k: int = 5,
    seed: int = 0,
    fitted_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs the protocol (module docstring) and writes its JSON.

    Args:
        side: ``"train"``: fit a calibration on these targets (returned under ``calibration``)
            and report its figures in-sample; ``"test"``: grade with ``calibration``.
        calibration: a :class:`~uae_ray.tasks.segment.status.StatusCalibration` (``test``).
        fitted_on: models and command recorded in a fitted calibration.
    """
    from uae_ray.api.inputs import load_support
    from uae_ray.tasks.segment import TargetSlices, localize_prompts, segment_prompts
    from uae_ray.tasks.segment.status import feature_vector, fit_calibration, status_figures
    from uae_ray.tasks.support import SupportSpec

    if side not in ("train", "test") or (side == "test" and calibration is None):
        raise ValueError("side must be 'train', or 'test' with a calibration")
    t_start = time.perf_counter()
    support_cases, _ = draw_cases(data_dir, split, k, 0, seed)
    supports = [load_support(SupportSpec(str(c.image_path), str(c.labels_path)), modality="CT") for c in support_cases]
    organs = [o for o in HEAD_NECK if any(o in c.whole_structures for c in support_cases)]
    hn, other = status_targets(data_dir, split, side, n_targets, n_other, [c.case_id for c in support_cases], seed)
    if side == "test":
        from uae_ray.split import check_unseen, read_case_patients

        check_unseen(calibration.fitted_on.get("targets", []), [c.case_id for c in hn + other],
                     read_case_patients(data_dir), "the status calibration")
    records: list[dict[str, Any]] = []
    for i, case in enumerate(hn + other):
        whole = case.whole_structures
        full_lab = None
        for variant, image, lab, names in _variants(case, i):
            full_lab = lab if variant == "full" else full_lab
            truth = {o: _truth(o, variant, full_lab, lab, names, whole) for o in organs}
            t0 = time.perf_counter()
            target = TargetSlices(image, "CT", segmenter.config)
            prompts = localize_prompts(make_localizer, supports, image, target, organs, "spl", "CT")
            result = segment_prompts(segmenter, target, prompts)
            seconds = time.perf_counter() - t0
            pred = sitk.GetArrayViewFromImage(result.labels)
            for o in result.organs:
                if truth[o.name] is None:
                    continue
                present = truth[o.name] == "present"
                ids = [k2 for k2, v in names.items() if v == o.name]
                d = dice(pred == o.label, lab == ids[0]) if present else 0.0
                records.append({"target": case.case_id, "variant": variant, "organ": o.name, "truth": truth[o.name],
                                "dice": float(d), "localizer_status": o.status, "n_voxels": int(o.n_voxels),
                                "volume_ml": float(o.volume_ml), "evidence": dict(o.evidence),
                                "features": feature_vector(o.evidence, o.volume_ml).tolist()})
            logger.info("status-hn: %s/%s: %d structures in %.1f s", case.case_id, variant, len(result.organs), seconds)
    x = np.array([r["features"] for r in records], dtype=np.float64)
    dice_arr = np.array([r["dice"] for r in records])
    absent = np.array([r["truth"] == "absent" for r in records])
    if side == "train":
        calibration = fit_calibration(x, dice_arr, absent, [r["localizer_status"] for r in records],
                                      np.array([r["n_voxels"] for r in records]),
                                      {**(fitted_on or {}), "split": split, "side": "train",
                                       "targets": [c.case_id for c in hn + other],
                                       "supports": [c.case_id for c in support_cases], "n_masks": len(records)})
    for r in records:
        r["status"], r["quality"] = calibration.status(r["localizer_status"], r["evidence"], r["n_voxels"], r["volume_ml"])
    figures = status_figures([r["status"] for r in records], dice_arr, absent)
    by_variant = {v: status_figures([r["status"] for r in records if r["variant"] == v],
                                    np.array([r["dice"] for r in records if r["variant"] == v]),
                                    np.array([r["truth"] == "absent" for r in records if r["variant"] == v]))
                  for v in sorted({r["variant"] for r in records})}
    result = {
        "benchmark": "status-headneck",
        "side": side,
        "split": split,
        "leave_patient_out": side == "test",
        "model": getattr(segmenter, "version", "?"),
        "supports": [c.case_id for c in support_cases],
        "targets": [c.case_id for c in hn],
        "other_region_targets": [c.case_id for c in other],
        "k": k,
        "calibration": {**calibration.__dict__, "features": list(calibration.features)},
        "figures": figures,
        "by_variant": by_variant,
        "machine": machine_info(),
        "records": records,
        "wall_s": time.perf_counter() - t_start,
    }
    write_json(out, result)
    return result


def status_table(result: dict[str, Any]) -> str:
    """The three figures, overall and per variant."""
    rows = [{"variant": "all", **result["figures"]}] + [{"variant": v, **f} for v, f in result["by_variant"].items()]
    cols = ["variant", "n_present", "n_absent", "n_ok", "ok_dice_ge_0.5_pct", "absent_ok_pct", "present_ok_pct"]
    cal = result["calibration"]
    return (format_table(rows, cols) + f"\n\n{result['side']} side of {result['split']}; ok threshold "
            f"{cal['ok_threshold']:.3f}; statuses {result['figures']['status_counts']}")


__all__ = ["run_status_hn", "status_table", "status_targets"]
