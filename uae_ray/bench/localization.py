"""``uae-ray bench localization --protocol curated``: few-shot organ boxes, leave-one-out over the
curated cases (the head-neck cohort ``openkbp_*`` has its own protocol,
:mod:`uae_ray.bench.localization_hn`).

Every other labelled case of one modality (CT by default; MR supports only for MR targets) is a
target in turn. Its organs (labels with at least :data:`MIN_VOXELS` voxels, tumours and
planning volumes excluded, see :data:`~uae_ray.data.cases.NON_ANATOMICAL`) that at least one
*other patient's* case also has are localized from those cases as supports: for k = 1 .. up
to ``max_k`` supports, every k-subset of the available supports (at most ``max_subsets``,
seeded, when there are more). Ground truth: the box of the target's own label voxels (equal to
its ``boxes.csv``).

Metrics per (target, organ, method, k), averaged over the subsets:

* IoU of the predicted and true boxes (both boxes of voxel centres, LPS mm);
* mean wall distance: the mean over the six faces of ``|predicted - true|`` (mm);
* seconds per organ: matching and voting (embedding of the scans reported apart).

Summaries: mean IoU over organs of at least ``min_ml`` (default 20 ml) and over all organs,
per method and k, and with every available support ("k = all"). Per support and target every
method sees the same organs; the methods:

* ``embedding/transfer`` and ``embedding/extremes`` (:class:`~uae_ray.tasks.localize.EmbeddingLocalizer`
  modes), each voted with both cut policies (``keep``, the default, and ``extend``; the
  non-default one is named in the method, e.g. ``embedding/transfer/cut-extend``);
* ``medlam`` (:class:`~uae_ray.tasks.localize.MedLAMLocalizer`), when its weights exist.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.data.cases import NON_ANATOMICAL, Case, load_cases
from uae_ray.matching import Embedder, EmbeddingMaps, embed_image
from uae_ray.tasks.localize import (
    CUT_POLICIES,
    DEFAULT_CUT_POLICY,
    EmbeddingLocalizerConfig,
    box_iou,
    wall_distance,
    MedLAMLocalizer,
    MedLAMScan,
    OrganBox,
    SupportEstimate,
    estimate_organs,
    vote,
)
from uae_ray.api.inputs import load_support
from uae_ray.tasks.support import Support, SupportSpec, image_box

logger = logging.getLogger(__name__)

#: Organs with fewer labelled voxels are not benchmarked (as ``boxes.csv`` of the data).
MIN_VOXELS = 50
#: Methods of the benchmark (``--method``).
BENCH_METHODS = ("embedding", "medlam")
#: Embedding-localizer modes measured.
EMBEDDING_VARIANTS = ("transfer", "extremes")


def organ_names(support: Support, only: Sequence[str] | None = None) -> list[str]:
    """Anatomical organs of a case with at least :data:`MIN_VOXELS` voxels (of ``only``, if given)."""
    out = []
    for name in sorted(set(support.names.values())):
        if name in NON_ANATOMICAL or (only and name not in only):
            continue
        geo = support.organ(name)
        if geo is not None and geo.n_voxels >= MIN_VOXELS:
            out.append(name)
    return out


def _subsets(items: Sequence[str], k: int, max_subsets: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    combos = list(itertools.combinations(items, k))
    if len(combos) <= max_subsets:
        return combos
    pick = rng.choice(len(combos), size=max_subsets, replace=False)
    return [combos[i] for i in sorted(pick)]


def _subset_rng(seed: int, target: str, organ: str, k: int) -> np.random.Generator:
    """The same subsets for every method: seeded by the target, the organ and k."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(f"{target}/{organ}".encode()), k])


def box_record(target: str, organ: str, volume_ml: float, method: str, k: int, subset: tuple[str, ...],
               box: OrganBox, truth: np.ndarray, seconds: float) -> dict[str, Any]:
    """One benchmark row: a predicted box against the truth."""
    return {
        "target": target, "organ": organ, "volume_ml": volume_ml, "method": method, "k": k,
        "supports": list(subset), "iou": box_iou(box.box, truth), "wall_mm": wall_distance(box.box, truth),
        "status": box.status, "found": bool(box.found), "score": float(box.score), "seconds": seconds,
        "box": [float(v) for v in box.box], "truth": [float(v) for v in truth],
    }


def run_localization(
    data_dir: str | Path,
    embedder: Embedder | None,
    out: str | Path,
    seed: int = 0,
    max_k: int = 5,
    methods: Sequence[str] = BENCH_METHODS,
    modality: str = "CT",
    min_ml: float = 20.0,
    max_subsets: int = 10,
    cases: Sequence[str] | None = None,
    organs: Sequence[str] | None = None,
    medlam_checkpoint: str | Path | None = None,
    variants: Sequence[str] = EMBEDDING_VARIANTS,
    support_modality: str | None = None,
) -> dict[str, Any]:
    """Runs the benchmark, writes JSON to ``out`` and returns it (see the module docstring).

    Args:
        data_dir: the shared data folder (``manifest.csv``).
        embedder: embedder for the ``embedding`` method (None: that method is skipped).
        out: JSON path.
        seed: subset sampling seed.
        max_k: largest number of supports.
        methods: ``embedding`` and/or ``medlam``.
        modality: the modality of the targets.
        support_modality: the modality of the supports (default: ``modality``); e.g. CT
            supports for MR targets (organs carried across modalities).
        min_ml: organs at least this large make the headline mean.
        max_subsets: k-subsets drawn per (target, organ, k) at most.
        cases: restrict to these case ids (smoke runs).
        organs: restrict to these organs (smoke runs).
        medlam_checkpoint: MedLAM weights (None: the shipped ones; skipped when absent).
        variants: embedding-localizer modes to measure.
    """
    t_start = time.perf_counter()
    support_modality = support_modality or modality
    # the 170 head-neck CTs have their own leave-patient-out protocol (bench/localization_hn.py)
    pool: list[Case] = [c for c in load_cases(data_dir) if c.labels_path is not None
                        and not c.case_id.startswith("openkbp_")
                        and c.modality in (modality, support_modality) and (not cases or c.case_id in set(cases))]
    supports = {c.case_id: load_support(SupportSpec(str(c.image_path), str(c.labels_path)), modality=c.modality)
                for c in pool}
    patient = {c.case_id: c.patient for c in pool}
    names = {cid: organ_names(s, organs) for cid, s in supports.items()}
    targets = [c.case_id for c in pool if c.modality == modality]
    support_ids = [c.case_id for c in pool if c.modality == support_modality]
    # target -> organ -> supports (other patients' cases that have the organ)
    plan: dict[str, dict[str, list[str]]] = {}
    for t in targets:
        for organ in names[t]:
            avail = [s for s in support_ids if patient[s] != patient[t] and organ in names[s]]
            if avail:
                plan.setdefault(t, {})[organ] = avail
    involved = sorted({t for t in plan} | {s for p in plan.values() for v in p.values() for s in v})
    logger.info("localization bench: %d targets, %d (target, organ) pairs, cases %s", len(plan),
                sum(len(p) for p in plan.values()), ", ".join(involved))

    records: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    if "embedding" in methods and embedder is not None:
        t0 = time.perf_counter()
        maps: dict[str, EmbeddingMaps] = {c: embed_image(supports[c].image, embedder, supports[c].modality)
                                          for c in involved}
        timing["embed_s_per_scan"] = (time.perf_counter() - t0) / max(len(involved), 1)
        for variant in variants:
            cfg = EmbeddingLocalizerConfig(mode=variant, seed=seed)
            est: dict[tuple[str, str, str], tuple[SupportEstimate, float]] = {}
            for t, organ_map in plan.items():
                for s in sorted({s for v in organ_map.values() for s in v}):
                    wanted = [o for o, v in organ_map.items() if s in v]
                    t0 = time.perf_counter()
                    got = estimate_organs(supports[s], maps[s], wanted, maps[t], cfg)
                    dt = (time.perf_counter() - t0) / max(len(got), 1)
                    for o, e in got.items():
                        est[(t, s, o)] = (e, dt)
                    logger.info("embedding/%s: %s <- %s, %d organ(s), %.1f s/organ", variant, t, s, len(got), dt)
            for policy in CUT_POLICIES:
                method = f"embedding/{variant}" + ("" if policy == DEFAULT_CUT_POLICY else f"/cut-{policy}")
                records += _vote_all(plan, supports, est, method, policy, max_k, max_subsets, seed)
    if "medlam" in methods:
        records += _medlam_records(plan, supports, max_k, max_subsets, seed, medlam_checkpoint, timing)
    result = {
        "benchmark": "localization",
        "model_version": embedder.version if embedder is not None else None,
        "medlam_version": timing.pop("medlam_version", None),
        "data_dir": str(data_dir),
        "modality": modality,
        "support_modality": support_modality,
        "seed": seed,
        "max_k": max_k,
        "min_ml": min_ml,
        "max_subsets": max_subsets,
        "cases": involved,
        "machine": machine_info(),
        "timing": timing,
        "summary": summarize(records, min_ml),
        "per_organ": per_organ(records),
        "records": records,
    }
    result["wall_s"] = time.perf_counter() - t_start
    write_json(out, result)
    return result


def _vote_all(
    plan: dict[str, dict[str, list[str]]], supports: dict[str, Support],
    est: dict[tuple[str, str, str], tuple[SupportEstimate, float]], method: str, policy: str,
    max_k: int, max_subsets: int, seed: int,
) -> list[dict[str, Any]]:
    out = []
    for t, organ_map in plan.items():
        fov = image_box(supports[t].image)
        for organ, avail in organ_map.items():
            truth_geo = supports[t].organ(organ)
            for k in range(1, min(max_k, len(avail)) + 1):
                sub_rng = _subset_rng(seed, t, organ, k)
                for subset in _subsets(avail, k, max_subsets, sub_rng):
                    parts = [est[(t, s, organ)] for s in subset if (t, s, organ) in est]
                    if not parts:
                        continue
                    t0 = time.perf_counter()
                    box = vote(organ, [p[0] for p in parts], fov, method.split("/")[0], policy)
                    seconds = sum(p[1] for p in parts) + time.perf_counter() - t0
                    out.append(box_record(t, organ, truth_geo.volume_ml, method, k, subset, box, truth_geo.box, seconds))
    return out


def _medlam_records(
    plan: dict[str, dict[str, list[str]]], supports: dict[str, Support], max_k: int, max_subsets: int, seed: int,
    checkpoint: str | Path | None, timing: dict[str, Any],
) -> list[dict[str, Any]]:
    from uae_ray.models.medlam import default_medlam_checkpoint, load_medlam

    path = Path(checkpoint) if checkpoint else default_medlam_checkpoint()
    if not path.is_file():
        logger.warning("%s: no MedLAM weights; the medlam method is skipped", path)
        return []
    model = load_medlam(path)
    timing["medlam_version"] = model.version
    out: list[dict[str, Any]] = []
    loc = MedLAMLocalizer(model, [])
    t0 = time.perf_counter()
    scans = {c: MedLAMScan.prepare(supports[c].image, supports[c].modality, model.config.input_spacing_mm)
             for c in sorted({t for t in plan} | {s for p in plan.values() for v in p.values() for s in v})}
    timing["medlam_prepare_s_per_scan"] = (time.perf_counter() - t0) / max(len(scans), 1)
    loc._scans = {supports[c].name: scans[c] for c in scans}
    for policy in CUT_POLICIES:
        method = "medlam" + ("" if policy == DEFAULT_CUT_POLICY else f"/cut-{policy}")
        loc.cut_policy = policy
        for t, organ_map in plan.items():
            centre = loc.target_centre(scans[t])
            for organ, avail in organ_map.items():
                truth_geo = supports[t].organ(organ)
                for k in range(1, min(max_k, len(avail)) + 1):
                    sub_rng = _subset_rng(seed, t, organ, k)
                    for subset in _subsets(avail, k, max_subsets, sub_rng):
                        t0 = time.perf_counter()
                        parts = [loc.support_organ(supports[s], organ) for s in subset]
                        box = loc.localize_organ(scans[t], organ, parts, centre)
                        out.append(box_record(t, organ, truth_geo.volume_ml, method, k, subset, box, truth_geo.box,
                                           time.perf_counter() - t0))
            logger.info("%s: %s done (%d organ(s))", method, t, len(organ_map))
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _aggregate(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Mean over subsets per (method, k, target/organ)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["method"], str(r["k"]), f"{r['target']}/{r['organ']}")].append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {
            "iou": float(np.mean([r["iou"] for r in rs])),
            "wall_mm": float(np.mean([r["wall_mm"] for r in rs])),
            "found": float(np.mean([r["found"] for r in rs])),
            "seconds": float(np.mean([r["seconds"] for r in rs])),
            "volume_ml": rs[0]["volume_ml"],
            "n_subsets": len(rs),
        }
    return out


def summarize(records: list[dict[str, Any]], min_ml: float = 20.0) -> list[dict[str, Any]]:
    """One row per (method, k) and per method with all available supports (``k = "all"``)."""
    agg = _aggregate(records)
    max_k: dict[tuple[str, str], int] = defaultdict(int)
    for (method, k, item) in agg:
        max_k[(method, item)] = max(max_k[(method, item)], int(k))
    rows_by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for (method, k, item), v in agg.items():
        rows_by[(method, k)].append(v)
        if int(k) == max_k[(method, item)]:
            rows_by[(method, "all")].append(v)
    rows = []
    for (method, k), vs in sorted(rows_by.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", kv[0][1])):
        big = [v for v in vs if v["volume_ml"] >= min_ml]
        rows.append({
            "method": method,
            "k": k,
            "n_organs": len(vs),
            "n_organs_min_ml": len(big),
            "iou_min_ml": _mean([v["iou"] for v in big]),
            "wall_mm_min_ml": _mean([v["wall_mm"] for v in big]),
            "iou_all": _mean([v["iou"] for v in vs]),
            "wall_mm_all": _mean([v["wall_mm"] for v in vs]),
            "found_pct": 100.0 * float(np.mean([v["found"] for v in vs])),
            "median_s_per_organ": float(statistics.median([v["seconds"] for v in vs])),
        })
    return rows


def per_organ(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method and organ (all available supports): mean IoU and wall distance over targets."""
    agg = _aggregate(records)
    best_k: dict[tuple[str, str], int] = defaultdict(int)
    for (method, k, item) in agg:
        best_k[(method, item)] = max(best_k[(method, item)], int(k))
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    by: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for (method, k, item), v in agg.items():
        if int(k) == best_k[(method, item)]:
            target, organ = item.split("/", 1)
            by[(method, organ)].append((target, v))
    for (method, organ), tv in sorted(by.items()):
        out[method][organ] = {
            "n_targets": len(tv),
            "volume_ml": float(np.mean([v["volume_ml"] for _, v in tv])),
            "iou": float(np.mean([v["iou"] for _, v in tv])),
            "wall_mm": float(np.mean([v["wall_mm"] for _, v in tv])),
            "targets": {t: {"iou": v["iou"], "wall_mm": v["wall_mm"]} for t, v in tv},
        }
    return dict(out)


def localization_table(result: dict[str, Any]) -> str:
    """The summary as a text table."""
    cols = ["method", "k", "n_organs_min_ml", "iou_min_ml", "wall_mm_min_ml", "n_organs", "iou_all", "wall_mm_all",
            "found_pct", "median_s_per_organ"]
    return format_table(result["summary"], cols)


def per_organ_table(result: dict[str, Any], method: str) -> str:
    """Per-organ IoU and wall distance of one method (all available supports)."""
    rows = [{"organ": o, **v} for o, v in sorted(result["per_organ"].get(method, {}).items(),
                                                  key=lambda kv: -kv[1]["volume_ml"])]
    return format_table(rows, ["organ", "n_targets", "volume_ml", "iou", "wall_mm"])


__all__ = [
    "BENCH_METHODS",
    "box_iou",
    "localization_table",
    "organ_names",
    "per_organ",
    "per_organ_table",
    "run_localization",
    "summarize",
    "wall_distance",
]
