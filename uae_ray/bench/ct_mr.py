"""Part (c) of ``uae-ray bench accuracy``: CT <-> MR landmark matching.

Same patient: for every patient with a CT and an MR in one physical frame (the STS pairs of
``../shared/data``; nominal ground truth = identity, curators' co-registration), the target
scan is moved by a random rigid transform (up to 10 deg and 20 mm, no crop, no intensity
change; :func:`uae_ray.data.synthetic.synthetic_warp`) and points of the other scan are matched
into it, both directions. Points: random points inside the body of the template that lie in
the target's field of view, plus the template's landmarks. The truth is the rigid transform's
inverse applied to the template point, so the residual co-registration error of the pair (a few
mm, see the data README) is part of every method's error.

Cross-patient: CT and MR cases of different patients that share at least
:data:`~uae_ray.data.cases.MIN_SHARED` anatomical landmark names (organ centroids),
both directions.

The registration baselines (SimpleITK Mattes-MI rigid/affine, elastix affine and B-spline;
multi-modal metric) run on the same points.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.baselines import BASELINE_LABELS, transfer_by_registration
from uae_ray.bench.common import error_stats, method_stats
from uae_ray.data.cases import MIN_SHARED, Case
from uae_ray.data.synthetic import body_points, synthetic_warp
from uae_ray.matching import METHODS, Embedder, embed_image, find_points
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)



def _pair_run(
    template: Case,
    target: Case,
    src: np.ndarray,
    truth: np.ndarray,
    images: tuple[sitk.Image, sitk.Image],
    embedder: Embedder,
    methods: tuple[str, ...],
    baselines: tuple[str, ...],
    seed: int,
) -> dict[str, Any]:
    """Every method and the baselines on one ordered (template, target) pair."""
    t_img, g_img = images
    a = embed_image(t_img, embedder, template.modality)
    b = embed_image(g_img, embedder, target.modality)
    row: dict[str, Any] = {"template": template.case_id, "target": target.case_id, "n": len(src)}
    for method in methods:
        t0 = time.perf_counter()
        r = find_points(a, src, b, method)
        err = np.linalg.norm(r.points - truth, axis=1)
        row[method] = {
            **method_stats(err, r),
            "s_per_point": (time.perf_counter() - t0) / max(len(src), 1),
            "errors_mm": err.round(2).tolist(),
        }
    moved = transfer_by_registration(t_img, g_img, src, template.modality, target.modality, baselines, seed)
    for key, res in moved.items():
        err = np.linalg.norm(res["points"] - truth, axis=1)
        row[key] = {**error_stats(err), "errors_mm": err.round(2).tolist(), "s_per_target": res["seconds"],
                    **({"failed": res["failed"]} if "failed" in res else {})}
    return row


def same_patient(
    cases: list[Case], embedder: Embedder, seed: int, n_points: int, methods: tuple[str, ...], baselines: tuple[str, ...]
) -> list[dict[str, Any]]:
    """CT <-> MR of one patient in one frame, target moved by a random rigid transform."""
    rows = []
    by_patient: dict[str, dict[str, Case]] = {}
    for c in cases:
        by_patient.setdefault(c.patient, {})[c.modality] = c
    pairs = [(p["CT"], p["MR"]) for p in by_patient.values() if {"CT", "MR"} <= set(p)]
    for i, (ct, mr) in enumerate(sorted(pairs, key=lambda p: p[0].case_id)):
        for template, target in ((ct, mr), (mr, ct)):
            rng = np.random.default_rng([seed, 100 + i, template.modality == "CT"])
            t_img, g_img = template.read(), target.read()
            warp = synthetic_warp(
                g_img, seed=rng, max_rotation_deg=10.0, max_scale=0.0, max_translation_mm=20.0,
                elastic_mm=0.0, max_fov_crop=0.0, intensity=False,
            )
            # CT: above -300 HU; MR: above the 60th intensity percentile (tissue, not background).
            level = -300.0 if template.modality == "CT" else float(np.percentile(sitk.GetArrayViewFromImage(t_img), 60))
            points = [body_points(t_img, 4 * n_points, rng, level=level, margin_frac=0.0)]
            if template.landmarks is not None:
                points.append(template.landmarks.xyz)
            src = np.concatenate(points)
            # Keep points inside the (unmoved) target's field of view, 2 voxels from its border.
            src = src[Grid.from_image(g_img).contains(src, margin_vox=2.0)]
            src = src[: n_points + (len(template.landmarks) if template.landmarks is not None else 0)]
            truth = warp.to_warped(src)
            row = _pair_run(template, target, src, truth, (t_img, warp.image), embedder, methods, baselines, seed)
            row["warp"] = warp.params
            rows.append(row)
            logger.info("(c) %s -> %s (rigid-moved): %d points", template.case_id, target.case_id, len(src))
    return rows


def cross_patient(
    cases: list[Case], embedder: Embedder, methods: tuple[str, ...], baselines: tuple[str, ...], seed: int
) -> list[dict[str, Any]]:
    """CT <-> MR organ centroids between patients sharing anatomical landmark names."""
    rows = []
    for a, b in itertools.permutations(cases, 2):
        if a.modality == b.modality or a.patient == b.patient:
            continue
        la, lb = a.anatomical_landmarks(), b.anatomical_landmarks()
        if la is None or lb is None:
            continue
        shared = [n for n in la.names if n in lb.names]
        if len(shared) < MIN_SHARED:
            continue
        src = np.array([la.xyz[la.names.index(n)] for n in shared])
        truth = np.array([lb.xyz[lb.names.index(n)] for n in shared])
        row = _pair_run(a, b, src, truth, (a.read(), b.read()), embedder, methods, baselines, seed)
        row["names"] = shared
        rows.append(row)
        logger.info("(c) %s -> %s cross-patient: %d shared names", a.case_id, b.case_id, len(shared))
    return rows


def _pool(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        errs = [e for r in rows if key in r for e in r[key]["errors_mm"]]
        if errs:
            out[key] = error_stats(errs)
    return out


def same_patient_part(
    cases: list[Case], embedder: Embedder, seed: int, n_points: int, baselines: tuple[str, ...],
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """Part (e): same-patient CT <-> MR (rigidly moved) on these cases only; pooled per method."""
    rows = same_patient(cases, embedder, seed, n_points, methods, baselines)
    return {"pairs": rows, "overall": _pool(rows, [*methods, *BASELINE_LABELS])}


def ct_mr(
    cases: list[Case],
    embedder: Embedder,
    seed: int,
    n_points: int,
    baselines: tuple[str, ...],
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """Part (c): same-patient (rigidly moved) and cross-patient CT <-> MR; pooled per method."""
    keys = [*methods, *BASELINE_LABELS]
    same = same_patient(cases, embedder, seed, n_points, methods, baselines)
    cross = cross_patient(cases, embedder, methods, baselines, seed)
    return {
        "same_patient": {"pairs": same, "overall": _pool(same, keys)},
        "cross_patient": {"pairs": cross, "overall": _pool(cross, keys)},
    }


__all__ = ["ct_mr", "same_patient_part"]
