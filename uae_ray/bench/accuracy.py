"""``uae-ray bench accuracy``: landmark accuracy on the curated cases.

(a) Same-scan synthetic warps: every CT is warped (random affine + smooth elastic warp +
    intensity change + field-of-view crop, :mod:`uae_ray.bench.synthetic`); the case's
    landmarks plus random points inside the body are matched from the original into the warp,
    where their true position is known exactly.
(b) Cross-patient: for every ordered pair of CT cases that share anatomy, i.e. at least
    :data:`MIN_SHARED` anatomical landmark names (organ centroids from ``landmarks.csv``;
    tumours excluded; one shared long structure such as the spinal cord between a head-neck
    and a chest scan does not make a shared field of view), the template's landmarks are
    matched into the target and compared with the target's own landmarks of the same name.
    The same pairs are run through SimpleITK registration (Mattes MI, rigid then affine) and
    elastix (affine, then B-spline) as baselines: the landmarks are transferred through each
    result.
    Caveat: where a structure is cut by a field of view, its centroid moves; that affects both
    methods alike, and the per-name errors are in the JSON.
(c) CT <-> MR (:mod:`uae_ray.bench.ct_mr`): same patient in one frame with a random rigid
    offset, and cross-patient organ centroids.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.baselines import BASELINE_LABELS, BASELINES, transfer_by_registration
from uae_ray.bench.common import body_points, error_stats, format_table, machine_info, method_stats, write_json
from uae_ray.bench.ct_mr import ct_mr
from uae_ray.bench.dataset import MIN_SHARED, Case, load_cases
from uae_ray.bench.synthetic import synthetic_warp
from uae_ray.matching import METHODS, EmbeddingMaps, Embedder, MatchResult, embed_image, find_points
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)



def _timed_embed(image: sitk.Image, embedder: Embedder, modality: str) -> tuple[EmbeddingMaps, float]:
    t0 = time.perf_counter()
    maps = embed_image(image, embedder, modality)
    return maps, time.perf_counter() - t0


def synthetic_warps(
    cases: list[Case], embedder: Embedder, seed: int, n_points: int, methods: tuple[str, ...] = METHODS
) -> dict[str, Any]:
    """Part (a). Every method matches the same points; returns per-case results and pooled
    statistics per method.

    Points whose true position left the warped field of view (the crop) are kept apart: a
    method should abstain on them (``found=False``); their found rate is reported as
    ``outside_found_pct`` (lower is better).
    """
    per_case: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    found_in: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    found_out: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for i, case in enumerate(cases):
        rng = np.random.default_rng([seed, i])
        image = case.read()
        warp = synthetic_warp(image, seed=rng)
        points = [body_points(image, n_points, rng)]
        if case.landmarks is not None:
            points.append(case.landmarks.xyz)
        src = np.concatenate(points)
        truth = warp.to_warped(src)
        inside = Grid.from_image(warp.image).contains(truth, margin_vox=0.0)
        orig_maps, t_orig = _timed_embed(image, embedder, case.modality)
        warp_maps, t_warp = _timed_embed(warp.image, embedder, case.modality)
        row: dict[str, Any] = {
            "case": case.case_id,
            "n_inside": int(inside.sum()),
            "n_outside": int((~inside).sum()),
            "embed_s": (t_orig + t_warp) / 2,
            "warp": warp.params,
        }
        for method in methods:
            t0 = time.perf_counter()
            result = find_points(orig_maps, src, warp_maps, method)
            t_match = time.perf_counter() - t0
            err = np.linalg.norm(result.points - truth, axis=1)[inside]
            sub = MatchResult(result.points[inside], result.scores[inside], result.found[inside], result.consistency[inside])
            row[method] = {
                **method_stats(err, sub),
                "outside_found_pct": float(100.0 * result.found[~inside].mean()) if (~inside).any() else None,
                "match_s_per_point": t_match / max(len(src), 1),
            }
            pooled[method].append(err)
            found_in[method].append(sub.found)
            found_out[method].append(result.found[~inside])
            logger.info("(a) %s %s: MRE %.2f mm over %d points", case.case_id, method, float(err.mean()), len(err))
        per_case.append(row)
    overall: dict[str, Any] = {}
    for method in methods:
        err = np.concatenate(pooled[method])
        fin, fout = np.concatenate(found_in[method]), np.concatenate(found_out[method])
        overall[method] = {
            **error_stats(err),
            "found_pct": float(100.0 * fin.mean()),
            "found": error_stats(err[fin]),
            "outside_n": int(fout.size),
            "outside_found_pct": float(100.0 * fout.mean()) if fout.size else None,
        }
    return {"per_case": per_case, "overall": overall}


def cross_patient(
    cases: list[Case],
    embedder: Embedder,
    baselines: tuple[str, ...],
    seed: int,
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """Part (b): every ordered pair of cases sharing anatomical landmark names, every method
    and the registration baselines (:data:`~uae_ray.bench.baselines.BASELINES`) on the same
    landmarks."""
    with_lm = [c for c in cases if c.anatomical_landmarks() is not None]
    maps: dict[str, tuple[EmbeddingMaps, float]] = {}
    images: dict[str, sitk.Image] = {}
    pairs: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {}
    found_all: dict[str, list[bool]] = {m: [] for m in methods}
    for a, b in itertools.permutations(with_lm, 2):
        la, lb = a.anatomical_landmarks(), b.anatomical_landmarks()
        shared = [n for n in la.names if n in lb.names]
        if len(shared) < MIN_SHARED:
            continue
        for c in (a, b):
            if c.case_id not in maps:
                images[c.case_id] = c.read()
                maps[c.case_id] = _timed_embed(images[c.case_id], embedder, c.modality)
        src = np.array([la.xyz[la.names.index(n)] for n in shared])
        truth = np.array([lb.xyz[lb.names.index(n)] for n in shared])
        row: dict[str, Any] = {"template": a.case_id, "target": b.case_id, "names": shared}
        for method in methods:
            t0 = time.perf_counter()
            result = find_points(maps[a.case_id][0], src, maps[b.case_id][0], method)
            t_match = time.perf_counter() - t0
            err = np.linalg.norm(result.points - truth, axis=1)
            pooled.setdefault(method, []).extend(err.tolist())
            found_all[method].extend(result.found.tolist())
            row[method] = {
                **method_stats(err, result),
                "per_name_mm": dict(zip(shared, err.round(2).tolist())),
                "s_per_target_stored": t_match,
                "s_per_target_from_scratch": t_match + maps[b.case_id][1],
            }
        moved = transfer_by_registration(images[a.case_id], images[b.case_id], src, baselines=baselines, seed=seed)
        for key, res in moved.items():
            berr = np.linalg.norm(res["points"] - truth, axis=1)
            pooled.setdefault(key, []).extend(berr.tolist())
            row[key] = {**error_stats(berr), "per_name_mm": dict(zip(shared, berr.round(2).tolist())),
                        "s_per_target": res["seconds"], **({"failed": res["failed"]} if "failed" in res else {})}
        pairs.append(row)
        logger.info("(b) %s -> %s: %d shared names", a.case_id, b.case_id, len(shared))
    overall: dict[str, Any] = {}
    for key, errors in pooled.items():
        overall[key] = error_stats(errors)
        if key in found_all:
            found = np.array(found_all[key], dtype=bool)
            overall[key].update(
                found_pct=float(100.0 * found.mean()), found=error_stats(np.asarray(errors)[found])
            )
    return {"pairs": pairs, "overall": overall}


def run_accuracy(
    data_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    seed: int = 0,
    points_per_case: int = 20,
    baselines: tuple[str, ...] = BASELINES,
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """Runs (a) and (b) on the CT cases and (c) on the CT and MR cases of ``data_dir`` with every
    method in ``methods``, writes JSON, returns the results."""
    all_cases = load_cases(data_dir)
    cases = [c for c in all_cases if c.modality == "CT"]
    t0 = time.perf_counter()
    result = {
        "benchmark": "accuracy",
        "model_version": embedder.version,
        "data_dir": str(data_dir),
        "seed": seed,
        "methods": list(methods),
        "machine": machine_info(),
        "synthetic_warps": synthetic_warps(cases, embedder, seed, points_per_case, methods),
        "baselines": list(baselines),
        "cross_patient": cross_patient(cases, embedder, baselines, seed, methods),
        "ct_mr": ct_mr(all_cases, embedder, seed, points_per_case, baselines, methods),
    }
    result["wall_s"] = time.perf_counter() - t0
    write_json(out, result)
    return result


def accuracy_table(result: dict[str, Any]) -> str:
    """The headline figures as a text table (errors over all in-view points; ``found`` columns
    are the share found and the MRE over the found points only)."""
    rows = []
    parts = [("(a) synthetic warps", result["synthetic_warps"]), ("(b) cross-patient", result["cross_patient"])]
    if "ct_mr" in result:
        parts += [("(c) CT<->MR same patient", result["ct_mr"]["same_patient"]),
                  ("(c) CT<->MR cross-patient", result["ct_mr"]["cross_patient"])]
    for part, section in parts:
        overall = section["overall"]
        for method, stats in overall.items():
            name = BASELINE_LABELS.get(method, f"uae-ray {method}")
            row = {"part": part, "method": name, **stats}
            if "found" in stats:
                row["found_mre_mm"] = stats["found"].get("mre_mm", float("nan"))
            rows.append(row)
    cols = ["part", "method", "n", "mre_mm", "median_mm", "within_5mm_pct", "within_10mm_pct", "max_mm",
            "found_pct", "found_mre_mm", "outside_found_pct"]
    return format_table(rows, cols)
