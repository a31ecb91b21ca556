"""``uae-ray bench tracking``: lesion tracking on synthetic longitudinal pairs of real CTs.

For every CT of the curated cases (``../shared/data``) one synthetic longitudinal pair is made
(:mod:`uae_ray.bench.longitudinal`: the real scan as baseline, its tumours plus pseudo-lesions,
a follow-up deformed by breathing, lesion growth and a random synthetic warp, exact truth).

Methods (all on the same lesions and maps): ``nn``, ``fixed-point`` (centre only) and their
``+extent`` variants (the lesion votes with points at half its radius, see
:mod:`uae_ray.tasks.track`). Metrics over the lesions whose truth stays in the follow-up's
field of view: CPM@10mm (% within 10 mm), CPM@radius (% within the lesion's radius), MED
(mean Euclidean distance) and its mean absolute x / y / z parts, median, abstention rate, and
the matching time per lesion (from stored embeddings). Abstained lesions count at their best
estimate in MED and CPM. Lesions whose truth left the follow-up's field of view are reported
apart (``outside_found_pct``: share wrongly reported found; lower is better). Seeded per case
(``[seed, crc32(case_id)]``, so ``--case`` repeats the full run's draws) and deterministic.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.bench.longitudinal import make_pair
from uae_ray.data.cases import Case, load_cases, measured_cases
from uae_ray.matching import Embedder, embed_image
from uae_ray.split import DEFAULT_SPLIT
from uae_ray.tasks.track import TrackConfig, track_lesions
from uae_ray.volume import Grid

logger = logging.getLogger(__name__)

#: The methods of the benchmark: matching method, and whether the lesion's extent votes.
TRACK_METHODS: dict[str, tuple[str, bool]] = {
    "nn": ("nn", False),
    "fixed-point": ("fixed-point", False),
    "nn+extent": ("nn", True),
    "fixed-point+extent": ("fixed-point", True),
}


# --------------------------------------------------------------------------- metrics


def tracking_stats(err_xyz: np.ndarray, radius: np.ndarray, found: np.ndarray) -> dict[str, Any]:
    """CPM@10mm, CPM@radius, MED (+ x/y/z parts), median, max and abstention over lesions.

    Args:
        err_xyz: (N, 3) signed errors (estimate - truth) in mm.
        radius: (N,) lesion radii (mm).
        found: (N,) bool; abstained lesions count at their best estimate.
    """
    e = np.asarray(err_xyz, dtype=float).reshape(-1, 3)
    if len(e) == 0:
        return {"n": 0}
    d = np.linalg.norm(e, axis=1)
    found = np.asarray(found, dtype=bool)
    out: dict[str, Any] = {
        "n": int(len(d)),
        "cpm10_pct": float(100.0 * (d <= 10.0).mean()),
        "cpm_radius_pct": float(100.0 * (d <= np.asarray(radius)).mean()),
        "med_mm": float(d.mean()),
        "med_x_mm": float(np.abs(e[:, 0]).mean()),
        "med_y_mm": float(np.abs(e[:, 1]).mean()),
        "med_z_mm": float(np.abs(e[:, 2]).mean()),
        "median_mm": float(np.median(d)),
        "max_mm": float(d.max()),
        "abstain_pct": float(100.0 * (~found).mean()),
    }
    if found.any():
        out["found_med_mm"] = float(d[found].mean())
        out["found_cpm10_pct"] = float(100.0 * (d[found] <= 10.0).mean())
    return out


def run_pairs(
    cases: list[Case],
    embedder: Embedder,
    seed: int,
    points_per_case: int,
    methods: tuple[str, ...],
    config: TrackConfig | None = None,
) -> dict[str, Any]:
    """One longitudinal pair per case; every method on the same lesions. Returns per-case rows
    and pooled statistics per method and per lesion kind."""
    base_cfg = config or TrackConfig()
    per_case: list[dict[str, Any]] = []
    pooled: dict[str, dict[str, list]] = {m: {"err": [], "radius": [], "found": [], "kind": [], "out_found": []}
                                          for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    identity: list[np.ndarray] = []
    for case in cases:
        # Seeded per case (not per position in the list), so a run on some cases repeats
        # exactly what the full run drew for them.
        rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
        image = case.read()
        t0 = time.perf_counter()
        pair = make_pair(case, image, rng, points_per_case)
        t_make = time.perf_counter() - t0
        les = pair.lesions.lesions
        t0 = time.perf_counter()
        base_maps = embed_image(pair.baseline, embedder, case.modality)
        follow_maps = embed_image(pair.followup, embedder, case.modality)
        t_embed = (time.perf_counter() - t0) / 2
        inside = pair.inside
        identity.append((les.xyz - pair.truth)[inside])
        row: dict[str, Any] = {
            "case": case.case_id,
            "lesions": [
                {"name": n, "kind": k, "radius_mm": float(r), "inside": bool(ins),
                 "motion_mm": float(np.linalg.norm(t - c))}
                for n, k, r, ins, t, c in zip(les.names, pair.lesions.kinds, les.radius_mm, inside, pair.truth, les.xyz)
            ],
            "n_inside": int(inside.sum()),
            "n_outside": int((~inside).sum()),
            "make_pair_s": t_make,
            "embed_s_per_scan": t_embed,
            "params": pair.params,
        }
        grid = Grid.from_image(pair.baseline)
        for key in methods:
            method, extent = TRACK_METHODS[key]
            cfg = TrackConfig(**{**base_cfg.__dict__, "extent": extent})
            t0 = time.perf_counter()
            tracks = track_lesions(base_maps, les, follow_maps, method, cfg, grid)
            dt = time.perf_counter() - t0
            est = np.array([t.xyz for t in tracks])
            found = np.array([t.found for t in tracks], dtype=bool)
            err = est - pair.truth
            row[key] = {
                **tracking_stats(err[inside], les.radius_mm[inside], found[inside]),
                "outside_found_pct": float(100.0 * found[~inside].mean()) if (~inside).any() else None,
                "s_per_lesion": dt / max(len(les), 1),
                "errors_mm": np.linalg.norm(err, axis=1).round(2).tolist(),
                "found": found.tolist(),
            }
            p = pooled[key]
            p["err"].append(err[inside])
            p["radius"].append(les.radius_mm[inside])
            p["found"].append(found[inside])
            p["kind"].extend(k for k, ins in zip(pair.lesions.kinds, inside) if ins)
            p["out_found"].append(found[~inside])
            times[key].append(dt / max(len(les), 1))
            logger.info("%s %s: MED %.2f mm, CPM@10 %.0f %% over %d lesions (%.2f s/lesion)", case.case_id, key,
                        row[key].get("med_mm", float("nan")), row[key].get("cpm10_pct", float("nan")),
                        row[key]["n"], dt / max(len(les), 1))
        per_case.append(row)
    overall: dict[str, Any] = {}
    by_kind: dict[str, Any] = {}
    for key in methods:
        p = pooled[key]
        err, radius, found = np.concatenate(p["err"]), np.concatenate(p["radius"]), np.concatenate(p["found"])
        out_found = np.concatenate(p["out_found"])
        kinds = np.array(p["kind"])
        overall[key] = {
            **tracking_stats(err, radius, found),
            "outside_n": int(out_found.size),
            "outside_found_pct": float(100.0 * out_found.mean()) if out_found.size else None,
            "ms_per_lesion": float(1000.0 * np.mean(times[key])),
        }
        by_kind[key] = {k: tracking_stats(err[kinds == k], radius[kinds == k], found[kinds == k])
                        for k in sorted(set(kinds.tolist()))}
    ident = np.concatenate(identity)
    return {
        "per_case": per_case,
        "overall": overall,
        "by_kind": by_kind,
        "no_tracking": tracking_stats(ident, np.concatenate([p for p in pooled[methods[0]]["radius"]]),
                                      np.ones(len(ident), bool)),
    }


def run_tracking(
    data_dir: str | Path,
    embedder: Embedder,
    out: str | Path,
    seed: int = 0,
    points_per_case: int = 8,
    methods: tuple[str, ...] = tuple(TRACK_METHODS),
    cases: tuple[str, ...] | None = None,
    split: str | Path | None = DEFAULT_SPLIT,
    trained_on: list[str] | None = None,
) -> dict[str, Any]:
    """Runs the benchmark on every test-side CT of ``split`` (``None``: every CT; or the named
    ``cases`` among them), writes JSON. A model trained on a measured patient (``trained_on``)
    is refused (:class:`~uae_ray.split.SplitError`)."""
    unknown = [m for m in methods if m not in TRACK_METHODS]
    if unknown:
        raise ValueError(f"unknown tracking method(s) {unknown}; expected {list(TRACK_METHODS)}")
    chosen = measured_cases(load_cases(data_dir), split, trained_on, f"model {embedder.version}",
                            keep=lambda c: c.modality == "CT" and (not cases or c.case_id in cases))
    if not chosen:
        raise ValueError(f"{data_dir}: no CT cases{' named ' + ', '.join(cases) if cases else ''}")
    t0 = time.perf_counter()
    config = TrackConfig()
    result = {
        "benchmark": "tracking",
        "model_version": embedder.version,
        "data_dir": str(data_dir),
        "seed": seed,
        "split": str(split) if split is not None else None,
        "points_per_case": points_per_case,
        "methods": list(methods),
        "cases": [c.case_id for c in chosen],
        "config": {k: v for k, v in config.__dict__.items() if k != "fixed_point"}
        | {"fixed_point": dict(config.fixed_point.__dict__)},
        "machine": machine_info(),
        **run_pairs(chosen, embedder, seed, points_per_case, methods, config),
    }
    result["wall_s"] = time.perf_counter() - t0
    write_json(out, result)
    return result


def tracking_table(result: dict[str, Any]) -> str:
    """The headline figures per method as a text table (plus the no-tracking row)."""
    rows = [{"method": "no tracking (baseline coordinates)", **result["no_tracking"]}]
    for key, stats in result["overall"].items():
        rows.append({"method": f"uae-ray {key}", **stats})
    cols = ["method", "n", "cpm10_pct", "cpm_radius_pct", "med_mm", "med_x_mm", "med_y_mm", "med_z_mm",
            "median_mm", "max_mm", "abstain_pct", "found_med_mm", "outside_n", "outside_found_pct", "ms_per_lesion"]
    text = format_table(rows, cols)
    kinds = []
    for key, per in result.get("by_kind", {}).items():
        for kind, stats in per.items():
            kinds.append({"method": f"uae-ray {key}", "kind": kind, **stats})
    if kinds:
        text += "\n\n" + format_table(kinds, ["method", "kind", "n", "cpm10_pct", "cpm_radius_pct", "med_mm",
                                              "median_mm", "abstain_pct"])
    return text
