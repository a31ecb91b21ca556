"""Shared helpers of the benchmarks: error statistics, tables, JSON output, environment."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from uae_ray.atomic import write_text_atomic

if TYPE_CHECKING:
    from uae_ray.matching import MatchResult


def error_stats(errors_mm: Sequence[float], thresholds: Sequence[float] = (5.0, 10.0, 20.0)) -> dict[str, float]:
    """Mean radial error, median, max and the % within each threshold."""
    e = np.asarray(errors_mm, dtype=float)
    if e.size == 0:
        return {"n": 0}
    out: dict[str, float] = {
        "n": int(e.size),
        "mre_mm": float(e.mean()),
        "median_mm": float(np.median(e)),
        "max_mm": float(e.max()),
    }
    for t in thresholds:
        out[f"within_{t:g}mm_pct"] = float(100.0 * (e <= t).mean())
    return out


def method_stats(err: np.ndarray, result: "MatchResult") -> dict[str, Any]:
    """Error statistics of one matching method: over all points (abstentions count with their
    best estimate) and over the found ones, plus the found rate and the mean score."""
    found = np.asarray(result.found, dtype=bool)
    return {
        **error_stats(err),
        "found_pct": float(100.0 * found.mean()) if len(found) else float("nan"),
        "found": error_stats(err[found]),
        "mean_score": float(np.mean(result.scores)) if len(result) else float("nan"),
    }


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    """Runs ``fn`` ``repeats`` times; returns the median and all wall times in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (floats with 2 decimals)."""

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Writes JSON atomically (temporary file, then rename)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=float))
