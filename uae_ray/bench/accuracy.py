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
    The same pairs are run through SimpleITK registration (Mattes MI, rigid then affine) as
    baselines: the landmarks are transferred through the rigid and through the affine result.
    Caveat: where a structure is cut by a field of view, its centroid moves; that affects both
    methods alike, and the per-name errors are in the JSON.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.baselines import rigid_affine_registration, transfer_points
from uae_ray.bench.common import error_stats, format_table, machine_info, write_json
from uae_ray.bench.dataset import Case, load_cases
from uae_ray.bench.synthetic import synthetic_warp
from uae_ray.matching import EmbeddingMaps, Embedder, embed_image, match_points
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)

MIN_SHARED = 2


def body_points(image: sitk.Image, n: int, rng: np.random.Generator, hu_min: float = -300.0) -> np.ndarray:
    """Samples ``n`` world points at voxels inside the body (HU above ``hu_min``), away from the
    image border (10 % margin per axis).

    Returns:
        (n, 3) world points (LPS mm), or fewer if the body is small.
    """
    arr = sitk.GetArrayViewFromImage(image)  # z, y, x
    margin = [max(1, int(0.1 * s)) for s in arr.shape]
    inner = arr[margin[0] : -margin[0], margin[1] : -margin[1], margin[2] : -margin[2]]
    zyx = np.argwhere(inner > hu_min)
    if len(zyx) == 0:
        return np.zeros((0, 3))
    pick = zyx[rng.choice(len(zyx), size=min(n, len(zyx)), replace=False)] + np.array(margin)
    return Grid.from_image(image).index_to_world(pick[:, ::-1].astype(float))


def _timed_embed(image: sitk.Image, embedder: Embedder, modality: str) -> tuple[EmbeddingMaps, float]:
    t0 = time.perf_counter()
    maps = embed_image(image, embedder, modality)
    return maps, time.perf_counter() - t0


def synthetic_warps(cases: list[Case], embedder: Embedder, seed: int, n_points: int) -> dict[str, Any]:
    """Part (a). Returns per-case results and the pooled statistics."""
    per_case, pooled = [], []
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
        src, truth = src[inside], truth[inside]
        orig_maps, t_orig = _timed_embed(image, embedder, case.modality)
        warp_maps, t_warp = _timed_embed(warp.image, embedder, case.modality)
        t0 = time.perf_counter()
        pred, scores = match_points(orig_maps, src, warp_maps)
        t_match = time.perf_counter() - t0
        err = np.linalg.norm(pred - truth, axis=1)
        pooled += err.tolist()
        per_case.append(
            {
                "case": case.case_id,
                **error_stats(err),
                "mean_score": float(np.mean(scores)) if len(scores) else float("nan"),
                "embed_s": (t_orig + t_warp) / 2,
                "match_s_per_point": t_match / max(len(src), 1),
                "warp": warp.params,
            }
        )
        logger.info("(a) %s: MRE %.2f mm over %d points", case.case_id, float(err.mean()), len(err))
    return {"per_case": per_case, "overall": error_stats(pooled)}


def cross_patient(cases: list[Case], embedder: Embedder, baseline: bool, seed: int) -> dict[str, Any]:
    """Part (b): every ordered pair of cases sharing anatomical landmark names."""
    with_lm = [c for c in cases if c.anatomical_landmarks() is not None]
    maps: dict[str, tuple[EmbeddingMaps, float]] = {}
    images: dict[str, sitk.Image] = {}
    pairs: list[dict[str, Any]] = []
    ours_all: list[float] = []
    base_all: dict[str, list[float]] = {}
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
        t0 = time.perf_counter()
        pred, scores = match_points(maps[a.case_id][0], src, maps[b.case_id][0])
        t_match = time.perf_counter() - t0
        err = np.linalg.norm(pred - truth, axis=1)
        ours_all += err.tolist()
        row: dict[str, Any] = {
            "template": a.case_id,
            "target": b.case_id,
            "names": shared,
            "ours": {**error_stats(err), "per_name_mm": dict(zip(shared, err.round(2).tolist()))},
            "ours_s_per_target_stored": t_match,
            "ours_s_per_target_from_scratch": t_match + maps[b.case_id][1],
        }
        if baseline:
            t0 = time.perf_counter()
            transforms = rigid_affine_registration(images[b.case_id], images[a.case_id], "CT", seed=seed)
            row["sitk_s_per_target"] = time.perf_counter() - t0
            for kind, transform in transforms.items():
                berr = np.linalg.norm(transfer_points(transform, src) - truth, axis=1)
                base_all.setdefault(kind, []).extend(berr.tolist())
                row[f"sitk_{kind}"] = {**error_stats(berr), "per_name_mm": dict(zip(shared, berr.round(2).tolist()))}
        pairs.append(row)
        logger.info("(b) %s -> %s: %d shared names, MRE %.1f mm", a.case_id, b.case_id, len(shared), float(err.mean()))
    out: dict[str, Any] = {"pairs": pairs, "ours": error_stats(ours_all)}
    for kind, errors in base_all.items():
        out[f"sitk_{kind}"] = error_stats(errors)
    return out


def run_accuracy(
    data_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    seed: int = 0,
    points_per_case: int = 20,
    baseline: bool = True,
) -> dict[str, Any]:
    """Runs (a) and (b) on the CT cases of ``data_dir``, writes JSON, returns the results."""
    cases = load_cases(data_dir, modality="CT")
    t0 = time.perf_counter()
    result = {
        "benchmark": "accuracy",
        "model_version": embedder.version,
        "data_dir": str(data_dir),
        "seed": seed,
        "machine": machine_info(),
        "synthetic_warps": synthetic_warps(cases, embedder, seed, points_per_case),
        "cross_patient": cross_patient(cases, embedder, baseline, seed),
    }
    result["wall_s"] = time.perf_counter() - t0
    write_json(out, result)
    return result


def accuracy_table(result: dict[str, Any]) -> str:
    """The headline figures as a text table."""
    rows = []
    a = result["synthetic_warps"]["overall"]
    rows.append({"part": "(a) synthetic warps", "method": "uae-ray NN", **a})
    b = result["cross_patient"]
    rows.append({"part": "(b) cross-patient", "method": "uae-ray NN", **b["ours"]})
    for kind in ("rigid", "affine"):
        if f"sitk_{kind}" in b:
            rows.append({"part": "(b) cross-patient", "method": f"SimpleITK {kind} (MI)", **b[f"sitk_{kind}"]})
    cols = ["part", "method", "n", "mre_mm", "median_mm", "within_5mm_pct", "within_10mm_pct", "max_mm"]
    return format_table(rows, cols)
