"""``uae-ray bench accuracy``: landmark accuracy, leave-patient-out.

Every part measures on the *test* side of a patient split (:mod:`uae_ray.split`, default
``patients-v1``); a model whose checkpoint lists a test patient of a requested part among its
training cases is refused before anything runs. Templates may be train-side scans (a user's
annotated template is a scan the model may have seen); targets never are.

(a) Same-scan synthetic warps of the test CTs: every CT is warped (random affine + smooth
    elastic warp + intensity change + field-of-view crop, :mod:`uae_ray.data.synthetic`); the
    case's landmarks plus random points inside the body are matched from the original into the
    warp, where their true position is known exactly.
(b) Cross-patient organ centroids between the earlier (non head-neck-cohort) CTs that share at
    least :data:`MIN_SHARED` anatomical landmark names, target on the test side; (b') the same
    pairs restricted to the structures whole in both fields of view (the centroid of a cut
    organ is not a corresponding point). Baselines: identity, SimpleITK MI rigid/affine,
    elastix affine and B-spline, on the same points.
(d) Cross-patient head-neck and the abstention part: :mod:`uae_ray.bench.cross_patient`.
(e) CT <-> MR of the test patients (:func:`uae_ray.bench.ct_mr.same_patient_part`): one physical
    frame, the target moved by a random rigid transform, both directions.
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
from uae_ray.bench.common import error_stats, format_table, machine_info, method_stats, write_json
from uae_ray.bench.ct_mr import same_patient_part
from uae_ray.bench.cross_patient import HEAD_NECK_PREFIX, CaseEmbeddings, abstention, head_neck, pick_templates
from uae_ray.data.cases import MIN_SHARED, Case, load_cases
from uae_ray.data.synthetic import synthetic_warp
from uae_ray.matching import METHODS, EmbeddingMaps, Embedder, MatchResult, embed_image, find_points
from uae_ray.split import DEFAULT_SPLIT, PatientSplit, check_unseen, load_split
from uae_ray.volume import Grid
from uae_ray.data.synthetic import body_points

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
    targets: set[str] | None = None,
) -> dict[str, Any]:
    """Part (b): every ordered pair of cases sharing anatomical landmark names, every method
    and the registration baselines (:data:`~uae_ray.bench.baselines.BASELINES`) on the same
    landmarks; ``targets``: only pairs whose target is one of these case ids.

    ``overall_whole`` is part (b'): the same pairs restricted to the structures whole in both
    fields of view (:attr:`~uae_ray.data.cases.Case.whole_structures`).
    """
    with_lm = [c for c in cases if c.anatomical_landmarks() is not None]
    maps: dict[str, tuple[EmbeddingMaps, float]] = {}
    images: dict[str, sitk.Image] = {}
    pairs: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {}
    pooled_whole: dict[str, list[float]] = {}
    found_all: dict[str, list[bool]] = {m: [] for m in methods}
    for a, b in itertools.permutations(with_lm, 2):
        if targets is not None and b.case_id not in targets:
            continue
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
        whole = np.array([n in a.whole_structures and n in b.whole_structures for n in shared])
        row: dict[str, Any] = {"template": a.case_id, "target": b.case_id, "names": shared, "whole": whole.tolist()}
        for method in methods:
            t0 = time.perf_counter()
            result = find_points(maps[a.case_id][0], src, maps[b.case_id][0], method)
            t_match = time.perf_counter() - t0
            err = np.linalg.norm(result.points - truth, axis=1)
            pooled.setdefault(method, []).extend(err.tolist())
            pooled_whole.setdefault(method, []).extend(err[whole].tolist())
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
            pooled_whole.setdefault(key, []).extend(berr[whole].tolist())
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
    return {"pairs": pairs, "overall": overall, "overall_whole": {k: error_stats(v) for k, v in pooled_whole.items()}}


#: The parts of the benchmark (see the module docstring).
PARTS = ("a", "b", "d", "e", "abstention")


def part_cases(cases: list[Case], split: PatientSplit, n_templates: int = 3) -> dict[str, Any]:
    """The cases each part measures on (test side of ``split``) and the templates it uses."""
    test = [c for c in cases if split.is_test(c.patient)]
    train = [c for c in cases if not split.is_test(c.patient)]
    test_ct = [c for c in test if c.modality == "CT"]
    hn_targets = [c for c in test_ct if c.case_id.startswith(HEAD_NECK_PREFIX)]
    return {
        "a": test_ct,
        "b": [c for c in test_ct if not c.case_id.startswith(HEAD_NECK_PREFIX) and c.anatomical_landmarks() is not None],
        "d": hn_targets,
        "abstention": hn_targets,
        "e": [c for c in test if c.case_id.startswith("sts_")],
        "templates": pick_templates(train, n_templates),
    }


def run_accuracy(
    data_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    seed: int = 0,
    points_per_case: int = 20,
    baselines: tuple[str, ...] = BASELINES,
    methods: tuple[str, ...] = METHODS,
    split: str | Path = DEFAULT_SPLIT,
    parts: tuple[str, ...] = PARTS,
    trained_on: list[str] | None = None,
    n_templates: int = 3,
    max_targets: int | None = None,
) -> dict[str, Any]:
    """Runs the ``parts`` of the benchmark on the test side of ``split``, writes JSON, returns it.

    Args:
        trained_on: The model's training case ids (checkpoint metadata); a part whose
            measured cases include a patient of them is refused (:class:`~uae_ray.split.SplitError`)
            before anything runs. ``None``: unknown (recorded as such).
        n_templates: Head-neck templates of (d) and the abstention part (train side).
        max_targets: At most this many targets per part (the first by case id), for quick runs.

    Raises:
        SplitError: the model saw a test patient of a requested part.
        ValueError: an unknown part.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(sorted(unknown))}; expected some of {', '.join(PARTS)}")
    all_cases = load_cases(data_dir)
    patients = {c.case_id: c.patient for c in all_cases}
    the_split = load_split(split)
    chosen = part_cases(all_cases, the_split, n_templates)
    if max_targets:
        chosen.update({k: chosen[k][:max_targets] for k in ("d", "abstention")})
    if trained_on is not None:
        for part in parts:
            check_unseen(trained_on, [c.case_id for c in chosen[part]], patients,
                         f"model {embedder.version} (part {part})")
    embed = CaseEmbeddings(embedder)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "accuracy",
        "model_version": embedder.version,
        "split": the_split.name,
        "leave_patient_out": trained_on is not None,
        "data_dir": str(data_dir),
        "seed": seed,
        "methods": list(methods),
        "baselines": list(baselines),
        "parts": list(parts),
        "machine": machine_info(),
        "templates": [c.case_id for c in chosen["templates"]],
    }
    if "a" in parts:
        result["synthetic_warps"] = synthetic_warps(chosen["a"], embedder, seed, points_per_case, methods)
    if "b" in parts:
        earlier = [c for c in all_cases if c.modality == "CT" and not c.case_id.startswith(HEAD_NECK_PREFIX)]
        result["cross_patient"] = cross_patient(earlier, embedder, baselines, seed, methods,
                                                targets={c.case_id for c in chosen["b"]})
    if "d" in parts:
        result["head_neck"] = head_neck(chosen["templates"], chosen["d"], methods, baselines, seed, embed)
    if "abstention" in parts:
        result["abstention"] = abstention(chosen["templates"], chosen["abstention"], methods, embed, embed.image)
    if "e" in parts:
        result["ct_mr"] = {"same_patient": same_patient_part(chosen["e"], embedder, seed, points_per_case,
                                                             baselines, methods)}
    result["wall_s"] = time.perf_counter() - t0
    write_json(out, result)
    return result


def accuracy_table(result: dict[str, Any]) -> str:
    """The headline figures as a text table (errors over all in-view points; ``found`` columns
    are the share found and the MRE over the found points only), then the abstention table."""
    rows = []
    parts = []
    for key, label, sub in (("synthetic_warps", "(a) synthetic warps", "overall"),
                            ("cross_patient", "(b) cross-patient", "overall"),
                            ("cross_patient", "(b') whole in both", "overall_whole"),
                            ("head_neck", "(d) head-neck cross-patient", "overall")):
        if key in result and sub in result[key]:
            parts.append((label, {"overall": result[key][sub]}))
    if "ct_mr" in result:
        parts += [("(e) CT<->MR same patient" if k == "same_patient" else "(c) CT<->MR cross-patient", v)
                  for k, v in result["ct_mr"].items()]
    for part, section in parts:
        overall = section["overall"]
        for method, stats in overall.items():
            name = BASELINE_LABELS.get(method, f"uae-ray {method}")
            row = {"part": part, "method": name, **stats}
            if "found" in stats:
                row["found_mre_mm"] = stats["found"].get("mre_mm", float("nan"))
            rows.append(row)
    cols = ["part", "method", "n", "mre_mm", "median_mm", "within_5mm_pct", "within_10mm_pct", "within_20mm_pct",
            "max_mm", "found_pct", "found_mre_mm", "outside_found_pct"]
    text = format_table(rows, cols)
    if "abstention" in result:
        arows = [{"method": f"uae-ray {m}", **st} for m, st in result["abstention"]["overall"].items()]
        text += "\n\nabstention (test targets cropped along z):\n" + format_table(
            arows, ["method", "n_in_view", "n_out_of_view", "in_view_found_pct", "out_of_view_found_pct",
                    "found_within_10mm_pct", "found_within_20mm_pct"])
    return text
