"""``uae-ray bench calibrate``: choose the fixed-point ``found`` rule on *training* patients.

The abstention protocol of :mod:`uae_ray.bench.cross_patient` (template centroids matched into
targets cropped along z, so that some structures are out of view) is run on train-side
head-neck patients only: ``n_templates`` templates (:func:`~uae_ray.bench.cross_patient.
pick_templates`) and ``n_targets`` other train patients (smallest hash of the case id). Every
point keeps its consistency (share of the fixed-point cube that survived the round trips) and
its score; a grid of rules ``found = inside and consistency >= c and score >= s`` is then
evaluated, and the chosen rule is the one that finds the most in-view points while at least
``min_precision`` of the found points lie within 20 mm of the truth and at most
``max_out_found`` of the out-of-view points are found (margins under the targets, since test
patients differ). The chosen values become :class:`~uae_ray.matching.FixedPointConfig`'s
``min_consistent`` / ``min_found_score`` defaults, stated in the model card.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from uae_ray.bench.common import format_table, machine_info, write_json
from uae_ray.bench.cross_patient import HEAD_NECK_PREFIX, CaseEmbeddings, abstention, pick_templates
from uae_ray.data.cases import Case, load_cases
from uae_ray.matching import Embedder, FixedPointConfig
from uae_ray.split import DEFAULT_SPLIT, load_split

logger = logging.getLogger(__name__)

CONSISTENCY_GRID = tuple(round(v, 2) for v in np.arange(0.05, 0.951, 0.05))
SCORE_GRID = (0.0, *(round(v, 2) for v in np.arange(0.3, 0.851, 0.05)))


def rule_stats(cons: np.ndarray, score: np.ndarray, base: np.ndarray, in_view: np.ndarray, err: np.ndarray,
               c: float, s: float) -> dict[str, float]:
    """Found rates and precision of the rule ``base & cons >= c & score >= s`` over points.

    Args:
        cons, score, base, in_view, err: (N,) consistency, score, inside the target (found
            under the loosest rule), in-view flag and error (mm; any value for out-of-view points).
    """
    found = base & (cons >= c) & (score >= s)
    n_found = int(found.sum())
    good = found & in_view & (err <= 20.0)
    return {
        "min_consistent": c, "min_found_score": s,
        "in_view_found_pct": float(100 * found[in_view].mean()) if in_view.any() else float("nan"),
        "out_of_view_found_pct": float(100 * found[~in_view].mean()) if (~in_view).any() else float("nan"),
        "found_within_20mm_pct": float(100 * good.sum() / n_found) if n_found else float("nan"),
        "found_within_10mm_pct": float(100 * (found & in_view & (err <= 10.0)).sum() / n_found) if n_found else float("nan"),
    }


def choose_rule(grid: list[dict[str, float]], min_precision: float, max_out_found: float) -> dict[str, float]:
    """The admissible rule with the most in-view finds (ties: the looser rule); else the most precise."""
    ok = [g for g in grid if g["found_within_20mm_pct"] >= min_precision and g["out_of_view_found_pct"] <= max_out_found]
    if ok:
        return max(ok, key=lambda g: (g["in_view_found_pct"], -g["min_consistent"], -g["min_found_score"]))
    return max(grid, key=lambda g: (np.nan_to_num(g["found_within_20mm_pct"]), g["in_view_found_pct"]))


def calibration_cases(cases: list[Case], split_name: str, n_templates: int, n_targets: int) -> tuple[list[Case], list[Case]]:
    """Templates and targets of the calibration, all on the train side of the split."""
    split = load_split(split_name)
    train = [c for c in cases if not split.is_test(c.patient)]
    templates = pick_templates(train, n_templates)
    names = {t.case_id for t in templates}
    pool = [c for c in train if c.case_id.startswith(HEAD_NECK_PREFIX) and c.case_id not in names]
    pool.sort(key=lambda c: hashlib.sha256(f"calibrate:{c.case_id}".encode()).hexdigest())
    return templates, pool[:n_targets]


def run_calibration(data_dir: str | Path, embedder: Embedder, out: str | Path, split: str = DEFAULT_SPLIT,
                    n_templates: int = 3, n_targets: int = 20, min_precision: float = 97.0,
                    max_out_found: float = 5.0) -> dict[str, Any]:
    """Run the calibration (module docstring), write JSON, return it."""
    t0 = time.perf_counter()
    templates, targets = calibration_cases(load_cases(data_dir), split, n_templates, n_targets)
    default = FixedPointConfig()
    embed = CaseEmbeddings(embedder)
    # Every rule of the grid is evaluated on the same matches (``inside``: found under the loosest rule).
    res = abstention(templates, targets, ("fixed-point",), embed, embed.image)
    rows = [r for r in res["pairs"] if "fixed-point" in r]
    cat = lambda key: np.concatenate([np.asarray(r["fixed-point"][key], float) for r in rows])  # noqa: E731
    cons, score, err = cat("consistency"), cat("scores"), cat("errors_mm")
    base = cat("inside").astype(bool)
    in_view = np.concatenate([np.asarray(r["in_view"], bool) for r in rows])
    grid = [rule_stats(cons, score, base, in_view, err, c, s)
            for c, s in itertools.product(CONSISTENCY_GRID, SCORE_GRID)]
    chosen = choose_rule(grid, min_precision, max_out_found)
    result = {
        "benchmark": "calibrate", "model_version": embedder.version, "split": split, "side": "train",
        "templates": [t.case_id for t in templates], "targets": [t.case_id for t in targets],
        "n_points": int(len(cons)), "n_in_view": int(in_view.sum()),
        "default_rule": rule_stats(cons, score, base, in_view, err, default.min_consistent, default.min_found_score),
        "chosen": chosen, "constraints": {"min_precision_20mm_pct": min_precision, "max_out_of_view_found_pct": max_out_found},
        "grid": grid, "machine": machine_info(), "wall_s": time.perf_counter() - t0,
    }
    write_json(out, result)
    return result


def calibration_table(result: dict[str, Any]) -> str:
    """The default and the chosen rule side by side."""
    rows = [{"rule": "default", **result["default_rule"]}, {"rule": "chosen", **result["chosen"]}]
    return format_table(rows, ["rule", "min_consistent", "min_found_score", "in_view_found_pct",
                               "out_of_view_found_pct", "found_within_10mm_pct", "found_within_20mm_pct"])


__all__ = ["calibration_cases", "calibration_table", "choose_rule", "rule_stats", "run_calibration"]
