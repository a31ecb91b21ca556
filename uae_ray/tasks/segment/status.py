"""A mask's status, ``ok | low_confidence | not_found | outside_view``, from a calibrated quality figure.

The quality of a mask is the probability that its Dice is at least 0.5, from a logistic model
(:class:`StatusCalibration`) of figures the pipeline has anyway (``FEATURES``):

* ``verified``: share of the organ voxels carried into the target that matched back onto the
  organ in the supports (mean over the supports; the embedding localizer's check);
* ``agreement``: mean pairwise IoU of the supports' own boxes (filled with the fit's mean for
  one support);
* ``fov_fraction``: share of the voted box inside the target's view;
* ``score``: mean similarity of the matches;
* ``volume_error``: ``|log(mask ml / supports' median ml)|`` (capped at ``log 100``);

each standardised with the fit's mean and scale. The model and the ``ok`` threshold are fit
on training patients only (``uae-ray bench segmentation --calibrate-status``); the threshold is
the lowest one at which at least ``precision`` of the ``ok`` masks had Dice >= 0.5 and at most
``max_absent_ok`` of the organs absent from view were ``ok``.

Rule (:meth:`StatusCalibration.grade`): a mask whose box lies mostly outside the view
(``fov_fraction < min_fov_fraction``, 0.2: an organ bigger than a thin slab is still graded, or the localizer's ``outside_fov``) is ``outside_view``; no
box or no voxel is ``not_found``; otherwise ``ok`` at quality >= the threshold, else
``low_confidence``. A structure no support has keeps ``no_support``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

STATUSES = ("ok", "low_confidence", "not_found", "outside_view")
FEATURES = ("verified", "agreement", "fov_fraction", "score", "volume_error")
MAX_VOLUME_ERROR = math.log(100.0)
#: The shipped calibration (fit on training patients of patients-v1; see its ``fitted_on``).
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[2] / "models" / "weights" / "status_calibration_v1.json"


def feature_vector(evidence: dict[str, float], volume_ml: float) -> np.ndarray:
    """The raw ``FEATURES`` of a mask (NaN where a figure is missing)."""
    expected = float(evidence.get("expected_ml", float("nan")))
    if volume_ml > 0 and expected > 0:
        verr = min(abs(math.log(volume_ml / expected)), MAX_VOLUME_ERROR)
    else:
        verr = MAX_VOLUME_ERROR
    return np.array([float(evidence.get("verified", float("nan"))), float(evidence.get("agreement", float("nan"))),
                     float(evidence.get("fov_fraction", float("nan"))), float(evidence.get("score", float("nan"))),
                     verr], dtype=np.float64)


@dataclass(frozen=True)
class StatusCalibration:
    """A fitted quality model and threshold (module docstring).

    Attributes:
        mean / scale: per-feature standardisation (``FEATURES`` order); ``mean`` also fills NaN.
        weights / bias: the logistic model on the standardised features.
        ok_threshold: quality at or above which a mask is ``ok``.
        min_fov_fraction: below it a box is ``outside_view``.
        fitted_on: what the fit saw (split, case ids, models, counts, figures on them).
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    ok_threshold: float
    min_fov_fraction: float = 0.2
    features: tuple[str, ...] = FEATURES
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def quality(self, x: np.ndarray) -> np.ndarray:
        """Probability of Dice >= 0.5 for raw feature rows ``x`` (N, F) or (F,)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        x = np.where(np.isfinite(x), x, np.asarray(self.mean))
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        p = 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))
        return p

    def status(self, localizer_status: str, evidence: dict[str, float], n_voxels: int, volume_ml: float) -> tuple[str, float]:
        """``(status, quality)`` of one mask (module docstring's rule; quality NaN without a mask)."""
        if localizer_status == "no_support":
            return "no_support", float("nan")
        fov = float(evidence.get("fov_fraction", float("nan")))
        if localizer_status in ("outside_fov", "outside_view") or (np.isfinite(fov) and fov < self.min_fov_fraction):
            return "outside_view", float("nan")
        if localizer_status in ("not_found", "empty") or n_voxels == 0:
            return "not_found", float("nan")
        q = float(self.quality(feature_vector(evidence, volume_ml))[0])
        return ("ok" if q >= self.ok_threshold else "low_confidence"), q

    def grade(self, result) -> None:
        """Sets ``status`` and ``quality`` of every organ of a
        :class:`~uae_ray.tasks.segment.SegmentationResult` (in place)."""
        for o in result.organs:
            status, q = self.status(o.status, o.evidence, o.n_voxels, o.volume_ml)
            if status != o.status and status in ("outside_view", "not_found") and not o.message:
                o.message = f"{o.name}: {status.replace('_', ' ')}"
            elif status == "low_confidence":
                o.message = f"{o.name}: low confidence (quality {q:.2f} < {self.ok_threshold:.2f})"
            o.status, o.quality = status, q

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "StatusCalibration":
        """Reads a calibration JSON (default: the shipped one).

        Raises:
            FileNotFoundError / ValueError: one line naming the file and the cause.
        """
        path = Path(path) if path else DEFAULT_CALIBRATION
        try:
            data = json.loads(path.read_text())
            data["features"] = tuple(data["features"])
            if data["features"] != FEATURES:
                raise ValueError(f"features {data['features']} are not {FEATURES}")
            return cls(**{**data, **{k: tuple(data[k]) for k in ("mean", "scale", "weights")}})
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: status calibration not found") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a status calibration ({exc})") from None


@lru_cache(maxsize=1)
def default_calibration() -> StatusCalibration:
    """The shipped calibration (:data:`DEFAULT_CALIBRATION`), read once."""
    return StatusCalibration.load()


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """L2-regularised logistic regression on standardised features.

    Args:
        x: (N, F) raw features (NaN filled with the column mean).
        y: (N,) 0/1 targets.

    Returns:
        ``(mean (F,), scale (F,), weights (F,), bias)``.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T])
    x = np.where(np.isfinite(x), x, mean)
    scale = np.maximum(x.std(axis=0), 1e-6)
    z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
    y = np.asarray(y, dtype=np.float64)
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    w = np.zeros(z.shape[1])
    for _ in range(100):  # Newton's method (IRLS) on the penalised log-likelihood
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def choose_threshold(quality: np.ndarray, good: np.ndarray, absent: np.ndarray, precision: float = 0.95,
                     max_absent_ok: float = 0.05) -> float:
    """The lowest threshold with ``precision`` of the ok present masks good and at most
    ``max_absent_ok`` of the absent organs ok.

    Args:
        quality: (N,) quality of every mask (NaN: never ok).
        good: (N,) the mask's Dice >= 0.5 (False for absent organs).
        absent: (N,) the organ was not in the view.
    """
    q = np.where(np.isfinite(quality), quality, -1.0)
    n_absent = max(int(absent.sum()), 1)
    for t in np.unique(q[q >= 0]):
        ok = q >= t
        if not ok.any():
            break
        if good[ok].mean() >= precision and (ok & absent).sum() / n_absent <= max_absent_ok:
            return float(t)
    return 1.0


def status_figures(status: Sequence[str], dice: np.ndarray, absent: np.ndarray) -> dict[str, float]:
    """The issue's three status figures: share of ok masks with Dice >= 0.5, share of absent
    organs ok, share of present organs ok (plus the counts)."""
    status = np.asarray(status)
    ok = status == "ok"
    present = ~absent
    return {
        "ok_dice_ge_0.5_pct": 100.0 * float((ok & present & (dice >= 0.5)).sum() / ok.sum()) if ok.any() else float("nan"),
        "absent_ok_pct": 100.0 * float((ok & absent).sum() / max(absent.sum(), 1)),
        "present_ok_pct": 100.0 * float((ok & present).sum() / max(present.sum(), 1)),
        "n_present": int(present.sum()), "n_absent": int(absent.sum()), "n_ok": int(ok.sum()),
        "status_counts": {s: int((status == s).sum()) for s in sorted(set(status.tolist()))},
    }


def fit_calibration(x: np.ndarray, dice: np.ndarray, absent: np.ndarray, localizer_status: Sequence[str],
                    n_voxels: np.ndarray, fitted_on: dict[str, Any], precision: float = 0.95, max_absent_ok: float = 0.05,
                    min_fov_fraction: float = 0.2) -> StatusCalibration:
    """Fits the quality model on the masks that reach it and picks the ``ok`` threshold.

    Args:
        x: (N, F) raw features of every (target, organ).
        dice: (N,) Dice of the mask (0 for absent organs).
        absent: (N,) the organ was not in the target's view.
        localizer_status: (N,) the status before grading (``ok``, ``partial_fov``, ``not_found``, ...).
        n_voxels: (N,) voxels of the mask.
    """
    x = np.asarray(x, dtype=np.float64)
    good = (np.asarray(dice) >= 0.5) & ~absent
    probe = StatusCalibration(tuple(np.zeros(len(FEATURES))), tuple(np.ones(len(FEATURES))),
                              tuple(np.zeros(len(FEATURES))), 0.0, 0.0, min_fov_fraction)
    reach = np.array([probe.status(s, {"fov_fraction": f}, int(n), 1.0)[0] in ("ok", "low_confidence")
                      for s, f, n in zip(localizer_status, x[:, FEATURES.index("fov_fraction")], n_voxels)])
    mean, scale, w, b = fit_logistic(x[reach], good[reach].astype(float))
    cal = replace(probe, mean=tuple(mean), scale=tuple(scale), weights=tuple(w), bias=b)
    q = np.where(reach, cal.quality(x), np.nan)
    t = choose_threshold(q, good, absent, precision, max_absent_ok)
    return replace(cal, ok_threshold=t, fitted_on={**fitted_on, "precision": precision,
                                                     "max_absent_ok": max_absent_ok})


__all__ = ["DEFAULT_CALIBRATION", "FEATURES", "STATUSES", "StatusCalibration", "choose_threshold", "default_calibration",
           "feature_vector",
           "fit_calibration", "fit_logistic", "status_figures"]
