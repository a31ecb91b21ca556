"""Accuracy of an embedding checkpoint on synthetic warps of the CT cases of a data folder.

For every CT case: warp it (:func:`uae_ray.data.synthetic.synthetic_warp`, seeded by the
case id), pick ``n_points`` random body points (plus the case's ``landmarks.csv``) whose exact
warped position lies inside the warped field of view, match them original -> warped with
:func:`uae_ray.matching.nn.match_points` and report the radial errors (mm).

Usage::

    python -m uae_ray.train.evaluate --data ../shared/data [--checkpoint PATH] [--points 20]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.data.synthetic import body_points, synthetic_warp
from uae_ray.matching.embed import Embedder, EmbeddingMaps, embed_image
from uae_ray.matching.nn import match_points
from uae_ray.serving.local import LocalEmbedder
from uae_ray.train.data import list_cases
from uae_ray.volume import Grid, read_image

logger = logging.getLogger(__name__)

#: Random evaluation points are drawn among voxels above this HU (soft tissue and bone).
POINT_HU = -300.0


@dataclass
class CaseResult:
    """Errors of one case (mm)."""

    case_id: str
    n_points: int
    mre_mm: float
    median_mm: float
    max_mm: float
    within_5mm: float
    identity_mre_mm: float
    chance_mre_mm: float
    landmark_mre_mm: float | None


def read_landmarks(path: Path) -> np.ndarray:
    """World points (N, 3) x, y, z of a ``name,x,y,z`` CSV (empty when the file is absent)."""
    if not path.is_file():
        return np.zeros((0, 3))
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r["x"]), float(r["y"]), float(r["z"])] for r in rows]).reshape(-1, 3)


def evaluate_case(
    case_id: str, image: sitk.Image, embedder: Embedder, landmarks: np.ndarray, n_points: int = 20, seed: int = 0
) -> CaseResult:
    """Warp one CT, match body points and landmarks original -> warped, return the errors."""
    case_seed = zlib.crc32(case_id.encode()) + seed
    warp = synthetic_warp(image, seed=case_seed)
    rng = np.random.default_rng(case_seed)
    pts = body_points(image, 4 * n_points, rng, level=POINT_HU, margin_frac=0.0, margin_vox=3)
    gt = warp.to_warped(pts)
    keep = Grid.from_image(warp.image).contains(gt, margin_vox=-3.0)
    pts, gt = pts[keep][:n_points], gt[keep][:n_points]
    n_rand = len(pts)
    if len(landmarks):
        lgt = warp.to_warped(landmarks)
        lk = Grid.from_image(warp.image).contains(lgt, margin_vox=-1.0)
        pts = np.concatenate([pts, landmarks[lk]])
        gt = np.concatenate([gt, lgt[lk]])
    src: EmbeddingMaps = embed_image(image, embedder, "CT")
    dst: EmbeddingMaps = embed_image(warp.image, embedder, "CT")
    pred, _ = match_points(src, pts, dst)
    err = np.linalg.norm(pred - gt, axis=1)
    ident = np.linalg.norm(pts - gt, axis=1)
    # Chance: a uniformly random valid voxel of the warped image's map as the answer.
    vz = np.argwhere(dst.valid)
    rand = dst.local_grid.index_to_world(vz[rng.choice(len(vz), 200)][:, ::-1].astype(np.float64))
    chance = np.linalg.norm(gt[:, None, :] - rand[None], axis=2).mean()
    lm = err[n_rand:]
    return CaseResult(
        case_id=case_id,
        n_points=len(err),
        mre_mm=float(err.mean()),
        median_mm=float(np.median(err)),
        max_mm=float(err.max()),
        within_5mm=float((err <= 5.0).mean()),
        identity_mre_mm=float(ident.mean()),
        chance_mre_mm=float(chance),
        landmark_mre_mm=float(lm.mean()) if len(lm) else None,
    )


def evaluate(data_dir: str | Path, checkpoint: str | Path | None = None, n_points: int = 20, seed: int = 0) -> dict:
    """Evaluate a checkpoint on every CT case of ``data_dir``.

    Returns:
        ``{"model_version", "cases": [CaseResult as dict], "mean_mre_mm", "pooled_mre_mm", ...}``.
    """
    embedder = LocalEmbedder(checkpoint=checkpoint)
    results = []
    for case_id, path in list_cases(data_dir, "CT"):
        t0 = time.perf_counter()
        image = read_image(path)
        res = evaluate_case(case_id, image, embedder, read_landmarks(path.parent / "landmarks.csv"), n_points, seed)
        logger.info(
            "%-20s n=%3d MRE %6.2f mm (median %5.2f, <=5mm %3.0f%%, identity %6.2f, chance %6.1f) %.1fs",
            case_id, res.n_points, res.mre_mm, res.median_mm, 100 * res.within_5mm, res.identity_mre_mm,
            res.chance_mre_mm, time.perf_counter() - t0,
        )
        results.append(res)
    n = np.array([r.n_points for r in results])
    mre = np.array([r.mre_mm for r in results])
    return {
        "model_version": embedder.version,
        "cases": [r.__dict__ for r in results],
        "mean_mre_mm": float(mre.mean()),
        "pooled_mre_mm": float((mre * n).sum() / n.sum()),
        "mean_median_mm": float(np.mean([r.median_mm for r in results])),
        "mean_identity_mre_mm": float(np.mean([r.identity_mre_mm for r in results])),
        "mean_chance_mre_mm": float(np.mean([r.chance_mre_mm for r in results])),
    }


def main(argv: list[str] | None = None) -> dict:
    """Entry point; prints nothing, logs per case and writes ``--out`` JSON when given."""
    p = argparse.ArgumentParser(description="Synthetic-warp matching accuracy of an embedding checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = evaluate(args.data, args.checkpoint, args.points, args.seed)
    logger.info(
        "mean MRE %.2f mm, pooled %.2f mm, mean median %.2f mm (identity %.2f mm, chance %.1f mm)",
        summary["mean_mre_mm"], summary["pooled_mre_mm"], summary["mean_median_mm"],
        summary["mean_identity_mre_mm"], summary["mean_chance_mre_mm"],
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
