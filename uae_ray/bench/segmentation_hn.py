"""``uae-ray bench segmentation --protocol headneck``: few-shot segmentation of the seven
head-neck structures, leave-patient-out (MedLSAM's head-neck setting: Dice 39.1 % with SAM,
47.3 % with MedSAM, from automatic boxes).

Supports and targets are drawn as :mod:`uae_ray.bench.localization_hn` draws them (training
patients' head-neck CTs as supports, the split's test patients as targets, seeded). For each k
of ``ks`` the first k supports (in the draw's order: most structures whole in view first) are
the support set; every structure whole in the target's view (``label_details``) is localized
from the supports that have it whole and segmented in every prompt mode of
:mod:`uae_ray.bench.segmentation` (WPL, SPL and the true-box upper bounds). Dice and HD95 (mm)
per (target, structure, mode); the headline is the mean Dice over all of them (no volume
floor: the structures are small, 5-70 ml). Time per structure: localization (the target's
embedding included) and segmentation.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.bench.localization_hn import HEAD_NECK, draw_cases, protocol_fields
from uae_ray.bench.segmentation import MODES, segment_target, summarize

logger = logging.getLogger(__name__)

DEFAULT_KS = (5,)


def run_segmentation_hn(
    data_dir: str | Path,
    segmenter,
    make_localizer: Callable[[Sequence], object],
    out: str | Path,
    split: str = "patients-v1",
    n_targets: int = 20,
    ks: Sequence[int] = DEFAULT_KS,
    modes: Sequence[str] = MODES,
    seed: int = 0,
    localizer_name: str = "embedding/transfer",
    trained_on: dict[str, Sequence[str] | None] | None = None,
) -> dict[str, Any]:
    """Runs the protocol (module docstring), writes JSON to ``out`` and returns it.

    Args:
        trained_on: ``{model version: case ids it was trained on}`` for every model in the run
            (embedding, segment-anything); each is checked against the targets.

    Raises:
        SplitError: a model was trained on a target's patient.
    """
    from uae_ray.api.inputs import load_support
    from uae_ray.split import check_unseen, read_case_patients
    from uae_ray.tasks.support import SupportSpec

    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; expected {MODES}")
    t_start = time.perf_counter()
    support_cases, target_cases = draw_cases(data_dir, split, max(ks), n_targets, seed)
    patients = read_case_patients(data_dir)
    for version, cases in (trained_on or {}).items():
        if cases is not None:
            check_unseen(cases, [c.case_id for c in target_cases], patients, version)
    load = lambda c: load_support(SupportSpec(str(c.image_path), str(c.labels_path)), modality="CT")  # noqa: E731
    supports = [load(c) for c in support_cases]
    whole = {c.case_id: c.whole_structures & set(HEAD_NECK) for c in support_cases + target_cases}
    records: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    for case in target_cases:
        tsup = load(case)
        organs = [o for o in HEAD_NECK if o in whole[case.case_id]]
        for k in ks:
            use = [s for c, s in zip(support_cases[:k], supports[:k]) if whole[c.case_id] & set(organs)]
            mine = [o for o in organs if any(o in whole[c.case_id] for c in support_cases[:k])]
            if not mine:
                continue
            rec, tim = segment_target(segmenter, make_localizer, case.case_id, tsup, use, mine, modes, "CT")
            records += [{**r, "k": k} for r in rec]
            timing += [{**t, "k": k} for t in tim]
    result = {
        "benchmark": "segmentation-headneck",
        "model": getattr(segmenter, "version", "?"),
        "localizer": localizer_name,
        **protocol_fields(split, support_cases, target_cases, ks, seed),
        "modes": list(modes),
        "summary": {str(k): summarize([r for r in records if r["k"] == k], min_ml=0.0) for k in ks},
        "per_structure": {str(k): per_structure([r for r in records if r["k"] == k]) for k in ks},
        "seconds_per_scan": {str(k): _per_scan([t for t in timing if t["k"] == k]) for k in ks},
        "machine": machine_info(),
        "records": records,
        "timing": timing,
    }
    result["wall_s"] = time.perf_counter() - t_start
    write_json(out, result)
    return result


def per_structure(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{mode: {structure: {n, dice, hd95_median_mm}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode in sorted({r["mode"] for r in records}):
        for organ in sorted({r["organ"] for r in records}):
            rows = [r for r in records if r["mode"] == mode and r["organ"] == organ]
            if rows:
                hd = [r["hd95_mm"] for r in rows if np.isfinite(r["hd95_mm"])]
                out.setdefault(mode, {})[organ] = {"n": len(rows), "dice": float(np.mean([r["dice"] for r in rows])),
                                                   "hd95_median_mm": float(statistics.median(hd)) if hd else float("nan")}
    return out


def _per_scan(timing: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median seconds per target scan, per mode: localization (with the target's embedding) and segmentation."""
    out = {}
    for mode in sorted({t["mode"] for t in timing}):
        rows = [t for t in timing if t["mode"] == mode]
        out[mode] = {"localize_s": statistics.median(t["localize_s"] for t in rows),
                     "segment_s": statistics.median(t["segment_s"] for t in rows),
                     "total_s": statistics.median(t["localize_s"] + t["segment_s"] for t in rows)}
    return out


def segmentation_hn_table(result: dict[str, Any]) -> str:
    """Per k: mean Dice / HD95 per mode, seconds per scan; then Dice per structure at the largest k."""
    parts = []
    for k in result["ks"]:
        rows = [{"mode": r["mode"], "n": r["n_all"], "dice": r["dice_all"], "median_dice": r["median_dice_large"],
                 "hd95_median_mm": r["hd95_large_median_mm"], "empty": r["empty_large"],
                 "s_per_scan": result["seconds_per_scan"][str(k)][r["mode"]]["total_s"]}
                for r in result["summary"][str(k)]]
        parts.append(f"k = {k}:\n" + format_table(rows, ["mode", "n", "dice", "median_dice", "hd95_median_mm", "empty",
                                                         "s_per_scan"]))
    k = str(max(result["ks"]))
    table = result["per_structure"][k]
    modes = [m for m in MODES if m in table]
    organs = sorted({o for m in modes for o in table[m]})
    rows = [{"structure": o, **{m: table[m].get(o, {}).get("dice", float("nan")) for m in modes}} for o in organs]
    parts.append(f"Dice per structure, k = {k}:\n" + format_table(rows, ["structure", *modes]))
    return "\n\n".join(parts)


__all__ = ["run_segmentation_hn", "segmentation_hn_table"]
