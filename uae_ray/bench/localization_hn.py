"""``uae-ray bench localization --protocol headneck``: few-shot localization of the seven
head-neck structures, leave-patient-out (the published anchor's setting: MedLAM 5-shot box IoU
48.0 % on StructSeg).

Patients come from the split (``patients-v1`` by default): ``n_supports`` support scans are
drawn from the *training* patients' head-neck CTs (``openkbp_*``), preferring those with the most
of the seven structures whole in view; ``n_targets`` targets are the *test* patients' CTs (both
draws seeded, by a hash of the case id). A structure is measured in a target when it is whole in
the target's view (``meta.json`` ``label_details``) and is localized from the supports that
have it whole. For each k of ``ks``, up to ``max_subsets`` k-subsets of the supports (every one
when fewer) are voted, so k = 1 is the mean over single supports. Metrics as the curated
protocol (:mod:`uae_ray.bench.localization`): box IoU and mean wall distance per structure,
seconds per structure; plus seconds per target scan to localize every structure from all
``n_supports`` supports (the supports' and target's embeddings reported apart: a cohort job
embeds the supports once).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.bench.localization import box_record, per_organ, summarize
from uae_ray.data.cases import Case, load_cases
from uae_ray.matching import Embedder, embed_image
from uae_ray.matching.nn import MatcherCache

logger = logging.getLogger(__name__)

HEAD_NECK = ("brainstem", "spinal_cord", "parotid_gland_left", "parotid_gland_right", "mandible", "larynx",
             "esophagus")
DEFAULT_KS = (1, 3, 5)


def _rank(seed: int, case_id: str) -> str:
    return hashlib.sha256(f"localization-hn:{seed}:{case_id}".encode()).hexdigest()


def draw_cases(data_dir: str | Path, split: str, n_supports: int, n_targets: int,
               seed: int = 0) -> tuple[list[Case], list[Case]]:
    """``(supports from training patients, targets from test patients)`` (module docstring)."""
    from uae_ray.split import load_split

    the_split = load_split(split)
    cases = [c for c in load_cases(data_dir, "CT") if c.case_id.startswith("openkbp_") and c.labels_path]
    train = [c for c in cases if not the_split.is_test(c.patient)]
    test = sorted((c for c in cases if the_split.is_test(c.patient)), key=lambda c: _rank(seed, c.case_id))
    supports = sorted(train, key=lambda c: (-len(c.whole_structures & set(HEAD_NECK)), _rank(seed, c.case_id)))
    if len(supports) < n_supports or len(test) < n_targets:
        raise ValueError(f"{data_dir}: {len(supports)} training and {len(test)} test head-neck CTs; "
                         f"{n_supports} and {n_targets} asked")
    return supports[:n_supports], test[:n_targets]


def protocol_fields(split: str, support_cases: Sequence[Case], target_cases: Sequence[Case], ks: Sequence[int],
                    seed: int) -> dict[str, Any]:
    """The draw a head-neck benchmark JSON records (split, supports, targets, ks, seed)."""
    return {"split": split, "leave_patient_out": True, "supports": [c.case_id for c in support_cases],
            "targets": [c.case_id for c in target_cases], "ks": list(ks), "seed": seed}


def run_localization_hn(
    data_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    split: str = "patients-v1",
    n_targets: int = 20,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    max_subsets: int = 5,
    variant: str = "transfer",
    trained_on: Sequence[str] | None = None,
    window_mm: float | None = None,
) -> dict[str, Any]:
    """Runs the protocol (module docstring), writes JSON to ``out`` and returns it.

    Raises:
        SplitError: ``trained_on`` holds a target's patient.
    """
    from uae_ray.api.inputs import load_support
    from uae_ray.split import check_unseen, read_case_patients
    from uae_ray.tasks.localize import DEFAULT_CUT_POLICY, EmbeddingLocalizerConfig, estimate_organs, vote
    from uae_ray.tasks.support import SupportSpec, image_box

    t_start = time.perf_counter()
    n_supports = max(ks)
    support_cases, target_cases = draw_cases(data_dir, split, n_supports, n_targets, seed)
    if trained_on is not None:
        check_unseen(trained_on, [c.case_id for c in target_cases], read_case_patients(data_dir), embedder.version)
    load = lambda c: load_support(SupportSpec(str(c.image_path), str(c.labels_path)), modality="CT")  # noqa: E731
    supports = {c.case_id: load(c) for c in support_cases}
    whole = {c.case_id: c.whole_structures & set(HEAD_NECK) for c in support_cases + target_cases}
    t0 = time.perf_counter()
    support_maps = {cid: embed_image(s.image, embedder, "CT") for cid, s in supports.items()}
    support_embed_s = (time.perf_counter() - t0) / len(supports)
    cfg = EmbeddingLocalizerConfig(mode=variant, seed=seed, **({} if window_mm is None else {"window_mm": window_mm}))
    records: list[dict[str, Any]] = []
    per_scan_s, target_embed_s = [], []
    matchers = MatcherCache()  # as a localizer keeps them
    for case in target_cases:
        target = load(case)
        t0 = time.perf_counter()
        maps = embed_image(target.image, embedder, "CT")
        target_embed_s.append(time.perf_counter() - t0)
        organs = [o for o in HEAD_NECK if o in whole[case.case_id]]
        est, spent = {}, 0.0
        for cid, s in supports.items():
            wanted = [o for o in organs if o in whole[cid]]
            t0 = time.perf_counter()
            got = estimate_organs(s, support_maps[cid], wanted, maps, cfg, matchers)
            dt = time.perf_counter() - t0
            spent += dt
            for organ, e in got.items():
                est[(cid, organ)] = (e, dt / max(len(got), 1))
        per_scan_s.append(spent)
        fov = image_box(target.image)
        for organ in organs:
            truth = target.organ(organ)
            avail = [cid for cid in supports if (cid, organ) in est]
            for k in ks:
                subsets = list(itertools.combinations(avail, k))[:max_subsets] if len(avail) >= k else []
                for subset in subsets:
                    t0 = time.perf_counter()
                    box = vote(organ, [est[(cid, organ)][0] for cid in subset], fov, "embedding", DEFAULT_CUT_POLICY)
                    seconds = sum(est[(cid, organ)][1] for cid in subset) + time.perf_counter() - t0
                    records.append(box_record(case.case_id, organ, truth.volume_ml, f"embedding/{variant}", k,
                                              subset, box, truth.box, seconds))
        logger.info("localization-hn: %s, %d structures from %d supports in %.1f s", case.case_id, len(organs),
                    len(supports), spent)
    result = {
        "benchmark": "localization-headneck",
        "model_version": embedder.version,
        **protocol_fields(split, support_cases, target_cases, ks, seed),
        "max_subsets": max_subsets,
        "variant": variant,
        "window_mm": cfg.window_mm,
        "timing": {
            "support_embed_s_per_scan": support_embed_s,
            "target_embed_s_median": statistics.median(target_embed_s),
            "localize_s_per_scan_median": statistics.median(per_scan_s),
            "localize_s_per_scan": per_scan_s,
        },
        "summary": [r for r in summarize(records, min_ml=0.0) if r["k"] != "all"],
        "per_organ_k": {str(k): per_organ([r for r in records if r["k"] == k]) for k in ks},
        "machine": machine_info(),
        "records": records,
    }
    result["wall_s"] = time.perf_counter() - t_start
    write_json(out, result)
    return result


def localization_hn_table(result: dict[str, Any]) -> str:
    """Mean IoU / wall distance per k, then per structure at the largest k."""
    rows = [{"k": r["k"], "structures": r["n_organs"], "iou": r["iou_all"], "wall_mm": r["wall_mm_all"],
             "found_pct": r["found_pct"], "s_per_structure": r["median_s_per_organ"]} for r in result["summary"]]
    top = format_table(rows, ["k", "structures", "iou", "wall_mm", "found_pct", "s_per_structure"])
    k = str(max(result["ks"]))
    method = f"embedding/{result['variant']}"
    organs = result["per_organ_k"][k].get(method, {})
    rows = [{"structure": o, "targets": v["n_targets"], "iou": v["iou"], "wall_mm": v["wall_mm"]}
            for o, v in sorted(organs.items())]
    t = result["timing"]
    return (f"{top}\n\nper structure, k = {k}:\n" + format_table(rows, ["structure", "targets", "iou", "wall_mm"])
            + f"\n\nlocalize s / scan (all structures, {max(result['ks'])} supports): "
              f"{t['localize_s_per_scan_median']:.1f} (median); embed target {t['target_embed_s_median']:.1f} s")
