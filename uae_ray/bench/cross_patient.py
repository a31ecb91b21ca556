"""Cross-patient parts of ``uae-ray bench accuracy``, leave-patient-out.

(d) Head-neck: from each of ``n_templates`` train-side head-neck patients (``openkbp_pt<N>``;
    the ones with the most structures whole in the field of view, ties by case id) to every
    test-side head-neck patient, the centroids of the structures whole in both scans
    (:attr:`~uae_ray.data.cases.Case.whole_structures`) are matched and compared with the
    target's own centroids.
Abstention: the same template points in the test targets cropped along z (every other target
    keeps its upper half, the others the lower half, so some structures leave the field of
    view). A structure is *in view* when all its voxels lie in the crop and *out of view* when
    none does (partly cut ones are left out). Reported per method: the share of in-view points
    found, the share of out-of-view points found (wrongly), and the precision of ``found``
    (share of found points within 10 / 20 mm of the truth; an out-of-view point that is
    "found" counts as wrong).

Every method and the registration baselines (identity, SimpleITK MI affine, elastix affine +
B-spline) run on the same points; abstained points count in the errors with their best
estimate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from uae_ray.bench.baselines import transfer_by_registration
from uae_ray.bench.common import error_stats, method_stats
from uae_ray.data.cases import Case
from uae_ray.matching import EmbeddingMaps, Embedder, FixedPointConfig, embed_image, find_points

logger = logging.getLogger(__name__)

#: Case-id prefix of the head-neck cohort of ``../shared/data``.
HEAD_NECK_PREFIX = "openkbp_pt"


class CaseEmbeddings:
    """Images and embedding maps of cases, each computed once (callable: case -> (image, maps)).

    Args:
        embedder: The model.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._memo: dict[str, tuple[sitk.Image, EmbeddingMaps]] = {}

    def __call__(self, case: Case, keep: bool = True) -> tuple[sitk.Image, EmbeddingMaps]:
        """Image and maps of a case; ``keep=False``: not cached (a head-neck CT's maps are
        about 0.4 GB, so only templates are kept)."""
        if case.case_id in self._memo:
            return self._memo[case.case_id]
        image = case.read()
        out = (image, embed_image(image, self.embedder, case.modality))
        if keep:
            self._memo[case.case_id] = out
        return out

    def image(self, image: sitk.Image, modality: str) -> EmbeddingMaps:
        """Maps of an image that is not a case (e.g. a cropped target); not cached."""
        return embed_image(image, self.embedder, modality)


def pick_templates(train_cases: list[Case], n: int) -> list[Case]:
    """The ``n`` train-side head-neck cases with the most whole structures (ties: case id)."""
    hn = [c for c in train_cases if c.case_id.startswith(HEAD_NECK_PREFIX) and c.landmarks is not None]
    return sorted(hn, key=lambda c: (-len(c.whole_structures), c.case_id))[:n]


def _points(case: Case, names: list[str]) -> np.ndarray:
    lm = case.landmarks
    assert lm is not None
    return np.array([lm.xyz[lm.names.index(n)] for n in names], dtype=np.float64).reshape(-1, 3)


def crop_z(image: sitk.Image, labels: sitk.Image, upper: bool) -> tuple[sitk.Image, np.ndarray]:
    """Keep one half of a scan along its z axis (``upper``: the higher slice indices).

    Returns:
        The cropped image (same world frame) and the label array (Z, Y, X) of the same crop.
    """
    nz = image.GetSize()[2]
    z0, z1 = (nz // 2, nz) if upper else (0, nz - nz // 2)
    return image[:, :, z0:z1], sitk.GetArrayFromImage(labels)[z0:z1]


def view_status(full: np.ndarray, cropped: np.ndarray, names: dict[int, str]) -> dict[str, str]:
    """``"in"`` (every voxel kept), ``"out"`` (none kept) or ``"cut"`` per structure name."""
    ids_full, n_full = np.unique(full, return_counts=True)
    ids_crop, n_crop = np.unique(cropped, return_counts=True)
    kept = dict(zip(ids_crop.tolist(), n_crop.tolist()))
    out = {}
    for i, n in zip(ids_full.tolist(), n_full.tolist()):
        if i in names:
            k = kept.get(i, 0)
            out[names[i]] = "in" if k == n else "out" if k == 0 else "cut"
    return out


def _run_methods(a: EmbeddingMaps, src: np.ndarray, b: EmbeddingMaps, methods: tuple[str, ...],
                 config: FixedPointConfig | None = None) -> dict[str, Any]:
    out = {}
    for method in methods:
        t0 = time.perf_counter()
        r = find_points(a, src, b, method, config=config)
        out[method] = (r, time.perf_counter() - t0)
    return out


def head_neck(
    templates: list[Case],
    targets: list[Case],
    methods: tuple[str, ...],
    baselines: tuple[str, ...],
    seed: int,
    embed: Callable[[Case], tuple[sitk.Image, EmbeddingMaps]],
) -> dict[str, Any]:
    """Part (d); ``embed`` returns a case's image and maps (cached by the caller)."""
    pairs: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {}
    found_all: dict[str, list[bool]] = {m: [] for m in methods}
    per_name: dict[str, dict[str, list[float]]] = {}
    for tgt in targets:  # targets outer: one target's maps in memory at a time
        target_maps = None
        for tpl in templates:
            names = sorted(tpl.whole_structures & tgt.whole_structures & set(tgt.landmarks.names if tgt.landmarks else ()))
            if not names:
                continue
            t_img, t_maps = embed(tpl)
            g_img, g_maps = target_maps = target_maps or embed(tgt, keep=False)
            src, truth = _points(tpl, names), _points(tgt, names)
            row: dict[str, Any] = {"template": tpl.case_id, "target": tgt.case_id, "names": names}
            for method, (r, seconds) in _run_methods(t_maps, src, g_maps, methods).items():
                err = np.linalg.norm(r.points - truth, axis=1)
                pooled.setdefault(method, []).extend(err.tolist())
                found_all[method].extend(r.found.tolist())
                for n, e in zip(names, err):
                    per_name.setdefault(method, {}).setdefault(n, []).append(float(e))
                row[method] = {**method_stats(err, r), "errors_mm": err.round(2).tolist(),
                               "found": r.found.tolist(), "scores": np.round(r.scores, 4).tolist(),
                               "s_per_target_stored": seconds}
            for key, res in transfer_by_registration(t_img, g_img, src, baselines=baselines, seed=seed).items():
                err = np.linalg.norm(res["points"] - truth, axis=1)
                pooled.setdefault(key, []).extend(err.tolist())
                for n, e in zip(names, err):
                    per_name.setdefault(key, {}).setdefault(n, []).append(float(e))
                row[key] = {**error_stats(err), "errors_mm": err.round(2).tolist(), "s_per_target": res["seconds"],
                            **({"failed": res["failed"]} if "failed" in res else {})}
            pairs.append(row)
            logger.info("(d) %s -> %s: %d structures, %s", tpl.case_id, tgt.case_id, len(names),
                        ", ".join(f"{m} {row[m]['mre_mm']:.1f} mm" for m in methods))
    overall: dict[str, Any] = {}
    for key, errors in pooled.items():
        overall[key] = error_stats(errors)
        if key in found_all:
            found = np.array(found_all[key], dtype=bool)
            overall[key].update(found_pct=float(100.0 * found.mean()), found=error_stats(np.asarray(errors)[found]))
    names_table = {k: {n: error_stats(v) for n, v in sorted(d.items())} for k, d in per_name.items()}
    return {"templates": [t.case_id for t in templates], "targets": [t.case_id for t in targets],
            "pairs": pairs, "overall": overall, "per_structure": names_table}


def abstention(
    templates: list[Case],
    targets: list[Case],
    methods: tuple[str, ...],
    embed: Callable[[Case], tuple[sitk.Image, EmbeddingMaps]],
    embed_image_fn: Callable[[sitk.Image, str], EmbeddingMaps],
    config: FixedPointConfig | None = None,
) -> dict[str, Any]:
    """The abstention part (see the module docstring); ``config``: fixed-point matching and its
    ``found`` rule (default :class:`~uae_ray.matching.FixedPointConfig`)."""
    rule = config or FixedPointConfig()
    # Matched with no consistency or score test, so ``inside`` (found under the loosest rule) is
    # kept per point and any rule can be evaluated again from the JSON; ``found`` is ``rule``'s.
    loose = replace(rule, min_consistent=0.0, min_found_score=0.0)
    rows: list[dict[str, Any]] = []
    stats: dict[str, dict[str, list]] = {m: {"in_found": [], "out_found": [], "in_err": []} for m in methods}
    for i, tgt in enumerate(targets):  # targets outer: one cropped target's maps at a time
        if tgt.labels_path is None or tgt.landmarks is None:
            continue
        labels = sitk.ReadImage(str(tgt.labels_path))
        cropped, lab = crop_z(tgt.read(), labels, upper=i % 2 == 0)
        status = view_status(sitk.GetArrayFromImage(labels), lab, tgt.label_names)
        maps = None
        for tpl in templates:
            # whole in the uncropped target: in / out below is about the crop
            names = sorted(n for n in tpl.whole_structures & tgt.whole_structures if status.get(n) in ("in", "out"))
            if not names:
                continue
            _, t_maps = embed(tpl)
            maps = maps or embed_image_fn(cropped, tgt.modality)
            src, truth = _points(tpl, names), _points(tgt, names)
            inview = np.array([status[n] == "in" for n in names])
            row: dict[str, Any] = {"template": tpl.case_id, "target": tgt.case_id, "names": names,
                                   "in_view": inview.tolist()}
            for method, (r, _) in _run_methods(t_maps, src, maps, methods, loose).items():
                err = np.linalg.norm(r.points - truth, axis=1)
                found = r.found.copy()
                if method == "fixed-point":
                    found &= (r.consistency >= rule.min_consistent) & (r.scores >= rule.min_found_score)
                stats[method]["in_found"].extend(found[inview].tolist())
                stats[method]["out_found"].extend(found[~inview].tolist())
                stats[method]["in_err"].extend(np.where(found[inview], err[inview], np.nan).tolist())
                row[method] = {"found": found.tolist(), "inside": r.found.tolist(), "errors_mm": err.round(2).tolist(),
                               "scores": np.round(r.scores, 4).tolist(),
                               "consistency": np.round(r.consistency, 3).tolist()}
            rows.append(row)
    overall = {m: abstention_stats(np.array(s["in_found"], bool), np.array(s["out_found"], bool),
                                   np.array(s["in_err"], float)) for m, s in stats.items()}
    return {"pairs": rows, "overall": overall}


def abstention_stats(in_found: np.ndarray, out_found: np.ndarray, in_err_found: np.ndarray) -> dict[str, Any]:
    """Found rates and the precision of ``found``.

    Args:
        in_found: (N_in,) found flags of in-view points.
        out_found: (N_out,) found flags of out-of-view points.
        in_err_found: (N_in,) errors (mm) of the in-view points, NaN where not found.
    """
    n_found = int(in_found.sum() + out_found.sum())
    ok = {t: int(np.sum(in_err_found[in_found] <= t)) for t in (10, 20)}
    return {
        "n_in_view": int(in_found.size), "n_out_of_view": int(out_found.size),
        "in_view_found_pct": float(100.0 * in_found.mean()) if in_found.size else None,
        "out_of_view_found_pct": float(100.0 * out_found.mean()) if out_found.size else None,
        "n_found": n_found,
        "found_within_10mm_pct": float(100.0 * ok[10] / n_found) if n_found else None,
        "found_within_20mm_pct": float(100.0 * ok[20] / n_found) if n_found else None,
    }


__all__ = ["CaseEmbeddings", "HEAD_NECK_PREFIX", "abstention", "abstention_stats", "crop_z", "head_neck", "pick_templates", "view_status"]
