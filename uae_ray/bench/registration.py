"""``uae-ray bench registration``: landmark-based registration against known transforms.

Pairs (all on ``../shared/data``; seeded, so every run draws the same transforms):

* CT-CT, every CT case: the moving image is the CT itself resampled through a known transform
  ``S`` (moving space -> fixed space, about the image centre) on the CT's own grid:
  three rigid trials, one in each translation bin (<= 10, 10-25, 25-40 mm), each with an angle
  from one of the angle bins (<= 8, 8-16, 16-25 degrees; the bins are paired at random), one
  affine trial (per-axis scaling 0.9-1.1, rotation <= 8 deg, translation <= 10 mm) and one
  field-of-view crop (rigid <= 8 deg / 10 mm, then 25-40 % of one axis and 0-15 % of another
  cut off the moving grid).
* CT-MR, every patient with a CT and an MR in one physical frame (the STS pairs): fixed = the
  CT, moving = the MR resampled on its own grid through a known rigid ``S``, two trials per bin.
  The curators' co-registration of the pair (a few mm, see the data README) is part of the
  ground truth, so of every method's error.

The true fixed -> moving transform is ``S^-1``. TRE of a pair: the mean, over up to
``n_points`` random body points of the fixed image (:func:`~uae_ray.data.synthetic.body_points`)
that lie in the overlap (their true position inside the moving field of view), of
``|T(p) - S^-1(p)|``. Success: TRE < 10 mm; a registration that raises counts as a failure.

Methods on the same pairs: ours rigid / affine (one set of matches), each plus the short MI
refinement, and the SimpleITK Mattes-MI baselines (rigid, then affine from it;
:func:`~uae_ray.bench.baselines.rigid_affine_registration`) from the identity and from the
image centres (CenteredTransformInitializer GEOMETRY). SimpleITK runs single-threaded here, so
every figure repeats exactly. Our time is given from scratch (both images embedded) and with
stored embeddings (matching, the second pass's embedding of the de-rotated moving image and the
fit).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.baselines import rigid_affine_registration
from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.data.cases import Case, load_cases, measured_cases
from uae_ray.matching import Embedder
from uae_ray.split import DEFAULT_SPLIT
from uae_ray.tasks.register import Registrar, RegistrationError
from uae_ray.volume import Grid
from uae_ray.data.synthetic import body_points

logger = logging.getLogger(__name__)

TRANSLATION_BINS = ((0.0, 10.0), (10.0, 25.0), (25.0, 40.0))
ANGLE_BINS = ((0.0, 8.0), (8.0, 16.0), (16.0, 25.0))
SUCCESS_MM = 10.0
OURS = ("ours_rigid", "ours_affine", "ours_rigid_refine", "ours_affine_refine")
BASELINE_METHODS = ("mi_rigid_identity", "mi_affine_identity", "mi_rigid_centres", "mi_affine_centres")
METHOD_LABELS = {
    "ours_rigid": "uae-ray rigid",
    "ours_affine": "uae-ray affine",
    "ours_rigid_refine": "uae-ray rigid + refine",
    "ours_affine_refine": "uae-ray affine + refine",
    "mi_rigid_identity": "SimpleITK MI rigid, from identity",
    "mi_affine_identity": "SimpleITK MI affine, from identity",
    "mi_rigid_centres": "SimpleITK MI rigid, from centres",
    "mi_affine_centres": "SimpleITK MI affine, from centres",
}


@dataclass
class Trial:
    """One known transform: ``S`` maps moving space to fixed space."""

    kind: str  # "rigid", "affine" or "crop"
    translation_mm: float
    angle_deg: float
    s: sitk.AffineTransform
    params: dict[str, Any]
    crop: tuple[tuple[int, int], ...] | None = None  # per axis (x, y, z): voxels cut at (low, high)


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _make_s(centre: np.ndarray, matrix: np.ndarray, translation: np.ndarray) -> sitk.AffineTransform:
    s = sitk.AffineTransform(3)
    s.SetCenter(tuple(float(v) for v in centre))
    s.SetMatrix(tuple(float(v) for v in matrix.reshape(-1)))
    s.SetTranslation(tuple(float(v) for v in translation))
    return s


def _centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def draw_trials(image: sitk.Image, rng: np.random.Generator, ct_ct: bool, repeats: int = 1) -> list[Trial]:
    """The known transforms of one pair (see the module docstring)."""
    centre = _centre(image)
    trials = []
    for _ in range(repeats):
        for ti, ai in zip(range(3), rng.permutation(3)):
            t, a = rng.uniform(*TRANSLATION_BINS[ti]), rng.uniform(*ANGLE_BINS[ai])
            axis, direction = _unit(rng), _unit(rng)
            trials.append(Trial("rigid", t, a, _make_s(centre, _rotation(axis, a), t * direction),
                                {"axis": axis.tolist(), "translation_mm": (t * direction).tolist()}))
    if ct_ct:
        t, a = rng.uniform(0, 10), rng.uniform(0, 8)
        scale = rng.uniform(0.9, 1.1, 3)
        axis, direction = _unit(rng), _unit(rng)
        trials.append(Trial("affine", t, a, _make_s(centre, _rotation(axis, a) @ np.diag(scale), t * direction),
                            {"axis": axis.tolist(), "scale": scale.tolist(),
                             "translation_mm": (t * direction).tolist()}))
        t, a = rng.uniform(0, 10), rng.uniform(0, 8)
        axis, direction = _unit(rng), _unit(rng)
        size = image.GetSize()
        crop = [[0, 0], [0, 0], [0, 0]]
        big, small = rng.choice(3, size=2, replace=False)
        crop[big][int(rng.integers(2))] = int(rng.uniform(0.25, 0.40) * size[big])
        crop[small][int(rng.integers(2))] = int(rng.uniform(0.0, 0.15) * size[small])
        trials.append(Trial("crop", t, a, _make_s(centre, _rotation(axis, a), t * direction),
                            {"axis": axis.tolist(), "translation_mm": (t * direction).tolist(), "crop": crop},
                            tuple(tuple(c) for c in crop)))
    return trials


def make_moving(source: sitk.Image, trial: Trial, modality: str) -> sitk.Image:
    """``source`` resampled through ``trial.s`` on its own grid (cropped for crop trials)."""
    ref = source
    if trial.crop is not None:
        lo = [c[0] for c in trial.crop]
        size = [n - c[0] - c[1] for n, c in zip(source.GetSize(), trial.crop)]
        ref = sitk.Image(size, source.GetPixelID())
        ref.SetSpacing(source.GetSpacing())
        ref.SetDirection(source.GetDirection())
        ref.SetOrigin(source.TransformIndexToPhysicalPoint(lo))
    default = -1024.0 if modality == "CT" else 0.0
    return sitk.Resample(source, ref, trial.s, sitk.sitkLinear, default, source.GetPixelID())


def _tre(transform: sitk.Transform | None, points: np.ndarray, truth: np.ndarray) -> float:
    if transform is None:
        return float("inf")
    est = np.array([transform.TransformPoint(tuple(map(float, p))) for p in points]).reshape(-1, 3)
    return float(np.linalg.norm(est - truth, axis=1).mean())


def _evaluation_points(fixed: sitk.Image, moving: sitk.Image, source: sitk.Image, truth_tx: sitk.Transform,
                       n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pts = body_points(fixed, 4 * n, rng, margin_frac=0.0)
    pts = pts[Grid.from_image(source).contains(pts, margin_vox=-1.0)]  # MR: inside the MR's own field of view
    truth = np.array([truth_tx.TransformPoint(tuple(map(float, p))) for p in pts]).reshape(-1, 3)
    inside = Grid.from_image(moving).contains(truth, margin_vox=-1.0)
    return pts[inside][:n], truth[inside][:n]


def run_pair(
    registrar: Registrar,
    fixed: sitk.Image,
    source: sitk.Image,
    source_modality: str,
    trial: Trial,
    rng: np.random.Generator,
    n_points: int,
    baselines: bool,
    refine: bool,
    seed: int,
) -> dict[str, Any]:
    """Every method on one pair; returns the row (TRE, success and time per method)."""
    moving = make_moving(source, trial, source_modality)
    truth_tx = trial.s.GetInverse()
    pts, truth = _evaluation_points(fixed, moving, source, truth_tx, n_points, rng)
    row: dict[str, Any] = {"kind": trial.kind, "translation_mm": round(trial.translation_mm, 2),
                           "angle_deg": round(trial.angle_deg, 2), "n_points": len(pts), "params": trial.params,
                           "identity_tre_mm": _tre(sitk.Transform(), pts, truth)}
    t0 = time.perf_counter()
    try:
        results = registrar.register_many(moving, ("rigid", "affine"), source_modality,
                                          ("rigid", "affine") if refine else ())
    except RegistrationError as exc:  # no kind could be fitted
        results = {k: exc for k in ("rigid", "affine", "rigid+refine", "affine+refine")}
    wall = time.perf_counter() - t0
    for key, name in (("rigid", "ours_rigid"), ("affine", "ours_affine"),
                      ("rigid+refine", "ours_rigid_refine"), ("affine+refine", "ours_affine_refine")):
        if not refine and key.endswith("+refine"):
            continue
        res = results[key]
        if isinstance(res, RegistrationError):
            row[name] = {"tre_mm": float("inf"), "success": False, "error": str(res), "seconds": wall,
                         "seconds_stored": None}
            continue
        sec = res.seconds
        stored = sum(v for k, v in sec.items() if k not in ("embed_fixed", "embed_moving"))
        tre = _tre(res.transform, pts, truth)
        scratch = stored + sec["embed_fixed"] + sec["embed_moving"]
        row[name] = {"tre_mm": tre, "success": tre < SUCCESS_MM, "seconds": scratch,
                     "seconds_stored": stored, "stages": {k: round(v, 3) for k, v in sec.items()},
                     **{k: v for k, v in res.quality().items() if k != "seconds"}}
    if baselines:
        for init, suffix in (("identity", "identity"), ("geometry", "centres")):
            timings: dict[str, float] = {}
            try:
                txs = rigid_affine_registration(fixed, moving, registrar.fixed_modality, seed=seed,
                                                moving_modality=source_modality, init=init, threads=1,
                                                timings=timings)
            except RuntimeError as exc:  # ITK gives up (e.g. no overlap left)
                txs = {"rigid": None, "affine": None}
                timings = {"rigid_s": float("nan"), "affine_s": float("nan")}
                row[f"mi_error_{suffix}"] = " ".join(str(exc).split())[-300:]
            for kind in ("rigid", "affine"):
                tre = _tre(txs[kind], pts, truth)
                secs = timings["rigid_s"] + (timings["affine_s"] if kind == "affine" else 0.0)
                row[f"mi_{kind}_{suffix}"] = {"tre_mm": tre, "success": tre < SUCCESS_MM, "seconds": secs}
    return row


def _summary(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        cells = [r[m] for r in rows if m in r]
        if not cells:
            continue
        tre = np.array([c["tre_mm"] for c in cells], dtype=float)
        secs = np.array([c["seconds"] for c in cells], dtype=float)
        stored = [c["seconds_stored"] for c in cells if c.get("seconds_stored") is not None]
        finite = tre[np.isfinite(tre)]
        out[m] = {
            "n": len(cells),
            "success_pct": float(100.0 * np.mean([c["success"] for c in cells])),
            "median_tre_mm": float(np.median(tre)),  # failures count as infinite
            "mean_tre_mm_of_successes": float(np.mean(tre[tre < SUCCESS_MM])) if (tre < SUCCESS_MM).any() else None,
            "p90_tre_mm": float(np.percentile(tre, 90)),
            "failed_runs": int((~np.isfinite(tre)).sum()),
            "max_finite_tre_mm": float(finite.max()) if finite.size else None,
            "median_seconds": float(np.nanmedian(secs)) if np.isfinite(secs).any() else None,
            "median_seconds_stored": float(np.median(stored)) if stored else None,
        }
    return out


def _bins(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Success and median TRE per translation bin, per angle bin (rigid trials) and per trial kind."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "rigid":
            for lo, hi in TRANSLATION_BINS:
                if lo <= r["translation_mm"] <= hi:
                    groups.setdefault(f"rigid t {lo:g}-{hi:g} mm", []).append(r)
                    break
            for lo, hi in ANGLE_BINS:
                if lo <= r["angle_deg"] <= hi:
                    groups.setdefault(f"rigid angle {lo:g}-{hi:g} deg", []).append(r)
                    break
        else:
            groups.setdefault(r["kind"], []).append(r)
    return {name: _summary(group, methods) for name, group in groups.items()}


def run_registration(
    data_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    seed: int = 0,
    n_points: int = 100,
    baselines: bool = True,
    refine: bool = True,
    ctmr_embedder: Embedder | None = None,
    cases: tuple[str, ...] | None = None,
    max_trials: int | None = None,
    threads: int | None = 1,
    split: str | Path | None = DEFAULT_SPLIT,
    trained_on: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON; returns it.

    Args:
        embedder: For the CT-CT pairs.
        ctmr_embedder: For the CT-MR pairs (``None``: skip them).
        cases: Only these case ids (CT cases; an STS MR case id selects its CT-MR pair).
        max_trials: At most this many trials per pair (smoke runs).
        split: Patient split whose test side is measured (``None``: every case).
        trained_on: ``{"ct_ct": case ids, "ct_mr": case ids}`` of the two models' training data;
            a model trained on a measured patient is refused (:class:`~uae_ray.split.SplitError`).
        threads: torch intra-op threads (``None``: leave as is). SimpleITK always runs on one
            thread here (its multi-threaded registration does not repeat exactly), so one torch
            thread compares like with like; on this project's shared 2-core machines it was also
            the faster setting (matching 2 s on one thread against 10 s on two under load).
    """
    import torch

    sitk_threads, torch_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(data_dir, embedder, out, seed, n_points, baselines, refine, ctmr_embedder, cases, max_trials,
                    split, trained_on or {})
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_threads)
        torch.set_num_threads(torch_threads)


def _run(data_dir, embedder, out, seed, n_points, baselines, refine, ctmr_embedder, cases, max_trials, split,
         trained_on):
    methods = OURS[: 4 if refine else 2] + (BASELINE_METHODS if baselines else ())
    loaded = load_cases(data_dir)
    ct_cases = measured_cases(loaded, split, trained_on.get("ct_ct"), f"model {embedder.version}",
                              keep=lambda c: c.modality == "CT" and (not cases or c.case_id in cases))
    by_patient: dict[str, dict[str, Case]] = {}
    for c in measured_cases(loaded, split):
        by_patient.setdefault(c.patient, {})[c.modality] = c
    pairs = [(p["CT"], p["MR"]) for p in by_patient.values() if {"CT", "MR"} <= set(p)]
    pairs = [(ct, mr) for ct, mr in pairs if not cases or ct.case_id in cases or mr.case_id in cases]
    if ctmr_embedder is not None:
        in_pairs = {c.case_id for p in pairs for c in p}
        measured_cases(loaded, split, trained_on.get("ct_mr"), f"CT-MR model {ctmr_embedder.version}",
                       keep=lambda c: c.case_id in in_pairs)
    groups: dict[str, list[dict[str, Any]]] = {"ct_ct": [], "ct_mr": []}
    for i, case in enumerate(ct_cases):
        rng = np.random.default_rng([seed, i])
        image = case.read()
        registrar = Registrar(embedder, image, "CT", fixed_name=case.case_id)
        for j, trial in enumerate(draw_trials(image, rng, ct_ct=True)[:max_trials]):
            row = run_pair(registrar, image, image, "CT", trial, rng, n_points, baselines, refine, seed)
            row.update(case=case.case_id, fixed=case.case_id, moving=case.case_id, trial=j)
            groups["ct_ct"].append(row)
            _log(row, methods)
    if ctmr_embedder is not None:
        for i, (ct, mr) in enumerate(sorted(pairs, key=lambda p: p[0].case_id)):
            rng = np.random.default_rng([seed, 1000 + i])
            ct_img, mr_img = ct.read(), mr.read()
            registrar = Registrar(ctmr_embedder, ct_img, "CT", fixed_name=ct.case_id)
            for j, trial in enumerate(draw_trials(mr_img, rng, ct_ct=False, repeats=2)[:max_trials]):
                row = run_pair(registrar, ct_img, mr_img, "MR", trial, rng, n_points, baselines, refine, seed)
                row.update(case=ct.case_id, fixed=ct.case_id, moving=mr.case_id, trial=j)
                groups["ct_mr"].append(row)
                _log(row, methods)
    result: dict[str, Any] = {
        "benchmark": "registration",
        "split": str(split) if split is not None else None,
        "machine": machine_info(),
        "seed": seed,
        "model_version": embedder.version,
        "ctmr_model_version": ctmr_embedder.version if ctmr_embedder is not None else None,
        "success_mm": SUCCESS_MM,
        "methods": {m: METHOD_LABELS[m] for m in methods},
    }
    for name, rows in groups.items():
        if rows:
            result[name] = {"overall": _summary(rows, methods), "bins": _bins(rows, methods), "pairs": rows}
    write_json(out, result)
    return result


def _log(row: dict[str, Any], methods: tuple[str, ...]) -> None:
    tres = ", ".join(f"{m} {row[m]['tre_mm']:.2f}" for m in methods if m in row)
    logger.info("%s -> %s %s t=%.1f mm a=%.1f deg: TRE %s", row.get("fixed"), row.get("moving"), row["kind"],
                row["translation_mm"], row["angle_deg"], tres)


def registration_table(result: dict[str, Any]) -> str:
    """Plain-text tables: overall per method, then per bin (success % / median TRE)."""
    parts = []
    for group, title in (("ct_ct", "CT-CT"), ("ct_mr", "CT-MR")):
        if group not in result:
            continue
        model = result["model_version"] if group == "ct_ct" else result["ctmr_model_version"]
        rows = []
        for m, s in result[group]["overall"].items():
            rows.append({"method": METHOD_LABELS[m], "pairs": s["n"], "success %": s["success_pct"],
                         "median TRE mm": s["median_tre_mm"], "p90 TRE mm": s["p90_tre_mm"],
                         "s/pair": s["median_seconds"], "s/pair stored": s["median_seconds_stored"]})
        parts.append(f"{title} (model {model}):\n" + format_table(
            rows, ["method", "pairs", "success %", "median TRE mm", "p90 TRE mm", "s/pair", "s/pair stored"]))
        bin_rows = []
        for b, summ in result[group]["bins"].items():
            cell = {"bin": b}
            for m, s in summ.items():
                cell[METHOD_LABELS[m]] = f"{s['success_pct']:.0f} % / {s['median_tre_mm']:.2f}"
                cell["pairs"] = s["n"]
            bin_rows.append(cell)
        cols = ["bin", "pairs", *[METHOD_LABELS[m] for m in result[group]["overall"]]]
        parts.append(f"{title} per bin (success % / median TRE mm):\n" + format_table(bin_rows, cols))
    return "\n\n".join(parts)


__all__ = ["draw_trials", "make_moving", "registration_table", "run_pair", "run_registration"]
