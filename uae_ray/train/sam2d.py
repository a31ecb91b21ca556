"""Training recipe of the small segment-anything model (``sam-vit-tiny``, :mod:`uae_ray.models.sam2d`).

Data: the labelled CT cases of a data folder (``labels.nii.gz`` + names in ``meta.json``).
Each case is reoriented to LPS and every axial slice within 3 slices of a label is prepared
exactly as at inference (:class:`~uae_ray.tasks.segment.TargetSlices` window, then resized so
the longest side is ``image_size``); the label slice is resized with nearest neighbour. An organ
on a slice is a training object when it covers at least ``min_pixels`` pixels at model
resolution.

Each step draws ``slices_per_step`` slices and up to ``prompts_per_slice`` objects on each; the
image is encoded once and every prompt is decoded from it (as at inference). A prompt is one of

* a tight slice box jittered per side by -5 % .. +15 % of its size plus 0 .. 2 px (MedSAM
  perturbs boxes by up to 20 px at 1024), probability ``1 - p_wpl - p_negative``;
* the organ's whole 3D box extent (a WPL box, as the localizer gives), jittered +-10 %,
  probability ``p_wpl``, so the model learns to take the organ's part in a loose box;
* a negative: a WPL box on a slice 1-3 slices beyond the organ, target empty,
  probability ``p_negative`` (localized boxes overshoot the organ along z).

Augmentation: intensity x0.9-1.1 and +-10 (of 255), horizontal flip (p 0.5, image, mask and
box), and (p 0.3) the slice drawn 0.7-1x as large inside the input (a larger field of view). Loss: binary cross-entropy + soft Dice (MedSAM's loss) on the mask logits, bilinearly
upsampled from the low-resolution output (4x the embedding grid) to the input size, so the
boundary is learnt at the resolution the masks are used at. AdamW, linear warm-up, cosine
decay over the wall-clock budget.

Usage::

    python -m uae_ray.train.sam2d --data ../shared/data --seconds 1500 --threads 2 \
        --holdout ts_upper_abdomen,nsclc_lung1_001 --out runs/sam_vit_tiny_holdout.pt
    python -m uae_ray.train.sam2d --data ../shared/data --seconds 600 --threads 2 \
        --init runs/sam_vit_tiny_holdout.pt --out uae_ray/models/weights/sam_vit_tiny_v0.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from uae_ray.models.sam2d import SAM_VIT_TINY, Sam2D, Sam2DConfig, load_sam2d, preprocess_shape, save_sam2d

logger = logging.getLogger(__name__)


#: Label names not trained on: planning volumes are margins drawn around a target, not image content.
EXCLUDED_LABELS = frozenset({"ptv"})


@dataclass(frozen=True)
class SamTrainConfig:
    """Recipe parameters (defaults: the shipped model's)."""

    seconds: float = 1500.0
    steps: int = 100000
    slices_per_step: int = 8
    prompts_per_slice: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    p_wpl: float = 0.3
    p_negative: float = 0.1
    min_pixels: int = 8
    margin_slices: int = 3
    flip_prob: float = 0.5
    zoom_prob: float = 0.3
    zoom_min: float = 0.7
    seed: int = 0


@dataclass
class SliceSet:
    """Prepared training slices.

    Attributes:
        images: (S, L, L) float16, windowed [0, 255], resized, zero-padded.
        labels: (S, L, L) int16, organ ids (case-local, remapped to global ids) on the same grid.
        sizes: (S, 2) the resized slice size (h', w') inside the padding.
        case: (S,) case index; z: (S,) slice index in the oriented case.
        organ_boxes: {(case, organ id): (x0, y0, x1, y1, z0, z1)} 3D extent at model resolution.
        organ_names: {organ id: name}.
        cases: case ids.
    """

    images: torch.Tensor
    labels: torch.Tensor
    sizes: np.ndarray
    case: np.ndarray
    z: np.ndarray
    organ_boxes: dict[tuple[int, int], np.ndarray]
    organ_names: dict[int, str]
    cases: list[str]

    def __len__(self) -> int:
        return len(self.z)


def labelled_ct_cases(data: str | Path) -> list[Any]:
    """The CT cases of ``data`` that have a label map, sorted by id."""
    from uae_ray.bench.dataset import load_cases

    return [c for c in load_cases(data, "CT") if c.labels_path is not None]


def prepare_slices_for_training(cases: Sequence[Any], config: Sam2DConfig, min_pixels: int = 8,
                                margin: int = 3) -> SliceSet:
    """Prepares every slice within ``margin`` of a label of each case (see module docstring)."""
    from uae_ray.tasks.segment import TargetSlices, orient
    from uae_ray.volume import read_image, read_labels

    L = config.image_size
    images, labels, sizes, case_idx, zs = [], [], [], [], []
    organ_boxes: dict[tuple[int, int], np.ndarray] = {}
    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    for ci, case in enumerate(cases):
        image = read_image(case.image_path)
        target = TargetSlices(image, "CT", config)
        lab = sitk.GetArrayFromImage(orient(read_labels(case.labels_path)))
        local_names = {int(k): v for k, v in case.meta.get("labels", {}).items()}
        remap = np.zeros(int(lab.max()) + 1, dtype=np.int16)
        for k, v in local_names.items():
            if k < len(remap) and v not in EXCLUDED_LABELS:
                remap[k] = ids.setdefault(v, len(ids) + 1)
                names[int(remap[k])] = v
        lab = remap[lab]
        nz, ny, nx = lab.shape
        nh, nw = preprocess_shape(ny, nx, config)
        any_z = np.flatnonzero(lab.reshape(nz, -1).any(axis=1))
        if len(any_z) == 0:
            continue
        keep = np.arange(max(any_z.min() - margin, 0), min(any_z.max() + margin, nz - 1) + 1)
        win = torch.from_numpy(target.windowed(keep))[:, None]
        win = F.interpolate(win, (nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 255)
        lt = F.interpolate(torch.from_numpy(lab[keep].astype(np.float32))[:, None], (nh, nw), mode="nearest")
        img = torch.zeros((len(keep), L, L), dtype=torch.float16)
        img[:, :nh, :nw] = win[:, 0].half()
        lb = torch.zeros((len(keep), L, L), dtype=torch.int16)
        lb[:, :nh, :nw] = lt[:, 0].to(torch.int16)
        images.append(img)
        labels.append(lb)
        sizes.append(np.tile([nh, nw], (len(keep), 1)))
        case_idx.append(np.full(len(keep), ci))
        zs.append(keep)
        for organ in np.unique(lb.numpy()):
            if organ == 0:
                continue
            zyx = np.argwhere(lb.numpy() == organ)
            organ_boxes[(ci, int(organ))] = np.array(
                [zyx[:, 2].min(), zyx[:, 1].min(), zyx[:, 2].max(), zyx[:, 1].max(),
                 keep[zyx[:, 0].min()], keep[zyx[:, 0].max()]], dtype=np.float32)
        logger.info("%s: %d slices (%dx%d -> %dx%d)", case.case_id, len(keep), ny, nx, nh, nw)
    return SliceSet(torch.cat(images), torch.cat(labels), np.concatenate(sizes), np.concatenate(case_idx),
                    np.concatenate(zs), organ_boxes, names, [c.case_id for c in cases])


def _jitter(box: np.ndarray, rng: np.random.Generator, lo: float, hi: float, px: float) -> np.ndarray:
    """Moves each side outward by U(lo, hi) x the box size plus U(0, px) pixels."""
    w = max(box[2] - box[0], 1.0)
    h = max(box[3] - box[1], 1.0)
    d = rng.uniform(lo, hi, 4) * np.array([w, h, w, h]) + rng.uniform(0, px, 4)
    return box + np.array([-d[0], -d[1], d[2], d[3]])


def _organ_box(extent: np.ndarray, flip: bool, width: float, sx: float, sy: float) -> np.ndarray:
    """An organ's 3D x-y extent (``x0, y0, x1, y1``) on a slice after the flip (within the
    original ``width``) and the zoom (``sx``, ``sy``)."""
    box = np.asarray(extent[:4], dtype=np.float64).copy()
    if flip:
        box[[0, 2]] = width - 1 - box[[2, 0]]
    return box * np.array([sx, sy, sx, sy])


def sample_batch(data: SliceSet, cfg: SamTrainConfig, model_cfg: Sam2DConfig, rng: np.random.Generator):
    """One training batch: ``(images (B, 3, L, L), boxes (N, 4), image_index (N,), targets (N, L, L))``."""
    L = model_cfg.image_size
    slice_ids = rng.choice(len(data), size=cfg.slices_per_step, replace=len(data) < cfg.slices_per_step)
    mean = torch.tensor(model_cfg.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model_cfg.pixel_std).view(3, 1, 1)
    imgs, boxes, index, targets = [], [], [], []
    for b, s in enumerate(slice_ids):
        nh, nw = (int(v) for v in data.sizes[s])
        img = data.images[s].float().clone()
        lab = data.labels[s].long().clone()
        img[:nh, :nw] = (img[:nh, :nw] * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10)).clamp(0, 255)
        flip = rng.random() < cfg.flip_prob
        if flip:
            img[:nh, :nw] = img[:nh, :nw].flip(-1)
            lab[:nh, :nw] = lab[:nh, :nw].flip(-1)
        sx = sy = 1.0
        if rng.random() < cfg.zoom_prob:  # the slice drawn smaller (a larger field of view)
            f = rng.uniform(cfg.zoom_min, 1.0)
            mh, mw = max(int(nh * f + 0.5), 16), max(int(nw * f + 0.5), 16)
            small = F.interpolate(img[None, None, :nh, :nw], (mh, mw), mode="bilinear", align_corners=False,
                                  antialias=True)[0, 0]
            small_lab = F.interpolate(lab[None, None, :nh, :nw].float(), (mh, mw), mode="nearest")[0, 0].long()
            img.zero_()
            lab.zero_()
            img[:mh, :mw] = small
            lab[:mh, :mw] = small_lab
            sx, sy = mw / nw, mh / nh
            nh, nw = mh, mw
        x = ((img[None].expand(3, -1, -1) - mean) / std)
        x[:, nh:, :] = 0.0
        x[:, :, nw:] = 0.0
        imgs.append(x)
        ci, z = int(data.case[s]), int(data.z[s])
        present = [int(o) for o in torch.unique(lab) if o > 0 and int((lab == o).sum()) >= cfg.min_pixels]
        case_organs = [o for (c, o) in data.organ_boxes if c == ci]
        chosen = list(rng.permutation(present)[: cfg.prompts_per_slice]) if present else []
        for organ in chosen:
            u = rng.random()
            mask = lab == organ
            if u < cfg.p_wpl:
                ob = _organ_box(data.organ_boxes[(ci, organ)], flip, nw / sx, sx, sy)
                box = _jitter(ob, rng, -0.1, 0.1, 1.0)
            else:
                ys, xs = torch.nonzero(mask, as_tuple=True)
                box = _jitter(np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64), rng, -0.05, 0.15, 2.0)
            boxes.append(box)
            index.append(b)
            targets.append(mask.float())
        # a negative: the WPL box of an organ of this case that is absent here but within 3 slices
        if case_organs and rng.random() < cfg.p_negative * cfg.prompts_per_slice:
            organ = int(rng.choice(case_organs))
            ob = data.organ_boxes[(ci, organ)]
            near = (ob[4] - 3 <= z < ob[4]) or (ob[5] < z <= ob[5] + 3)
            if near and not bool((lab == organ).any()):
                box = _organ_box(ob, flip, nw / sx, sx, sy)
                boxes.append(_jitter(box, rng, -0.1, 0.1, 1.0))
                index.append(b)
                targets.append(torch.zeros((L, L)))
    if not boxes:
        return None
    bx = np.clip(np.stack(boxes), 0, L - 1)
    return (torch.stack(imgs), torch.as_tensor(bx, dtype=torch.float32), torch.as_tensor(index),
            torch.stack(targets))


def seg_loss(logits: torch.Tensor, targets: torch.Tensor, size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice on logits upsampled to ``size`` (per-sample Dice, mean over samples)."""
    up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)[:, 0]
    bce = F.binary_cross_entropy_with_logits(up, targets)
    p = torch.sigmoid(up)
    inter = (p * targets).sum(dim=(1, 2))
    dice = 1.0 - (2 * inter + 1.0) / (p.sum(dim=(1, 2)) + targets.sum(dim=(1, 2)) + 1.0)
    loss = bce + dice.mean()
    return loss, {"bce": float(bce.detach()), "dice": float(dice.mean().detach())}


def train_sam2d(data: SliceSet, cfg: SamTrainConfig, model: Sam2D | None = None) -> tuple[Sam2D, list[dict[str, float]]]:
    """The training loop (wall-clock budget ``cfg.seconds`` or ``cfg.steps``, whichever first)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = model if model is not None else Sam2D(SAM_VIT_TINY)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    step = 0
    L = model.config.image_size
    while step < cfg.steps:
        elapsed = time.perf_counter() - t0
        if elapsed >= cfg.seconds:
            break
        frac = elapsed / cfg.seconds
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sample_batch(data, cfg, model.config, rng)
        if batch is None:
            continue
        images, boxes, index, targets = batch
        logits = model(images, boxes, index)
        loss, parts = seg_loss(logits, targets, L)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        history.append({"step": step, "t": round(time.perf_counter() - t0, 1), "loss": float(loss.detach()), "lr": lr,
                        "prompts": int(len(boxes)), **parts})
        if step % 50 == 0 or step == 1:
            recent = history[-50:]
            logger.info("step %d  %.0fs  loss %.4f (bce %.4f dice %.4f)  lr %.2e", step, time.perf_counter() - t0,
                        np.mean([h["loss"] for h in recent]), np.mean([h["bce"] for h in recent]),
                        np.mean([h["dice"] for h in recent]), lr)
    model.eval()
    return model, history


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def evaluate_gt_boxes(model: Sam2D, cases: Sequence[Any], min_voxels: int = 50) -> list[dict[str, Any]]:
    """3D Dice per organ on ``cases`` with ground-truth prompts: each slice's own box
    (``gt-slice``) and the true 3D box (``gt-wpl``), through the inference path."""
    from uae_ray.tasks.segment import (LocalSliceSegmenter, OrganPrompt, TargetSlices, mask_index_box,
                                       mask_slice_boxes, orient, segment_prompts, wpl_slice_boxes)
    from uae_ray.volume import read_image, read_labels

    seg = LocalSliceSegmenter(model)
    rows = []
    for case in cases:
        image = read_image(case.image_path)
        labels_img = read_labels(case.labels_path)
        target = TargetSlices(image, "CT", model.config)
        lab_o = sitk.GetArrayFromImage(orient(labels_img))
        truth = sitk.GetArrayFromImage(labels_img)
        names = {int(k): v for k, v in case.meta.get("labels", {}).items()}
        organs = [(k, v) for k, v in sorted(names.items()) if int((lab_o == k).sum()) >= min_voxels]
        vox_ml = float(np.prod(image.GetSpacing())) / 1000.0
        for mode in ("gt-slice", "gt-wpl"):
            prompts = []
            for k, v in organs:
                m = lab_o == k
                boxes = mask_slice_boxes(m) if mode == "gt-slice" else wpl_slice_boxes(mask_index_box(m))
                prompts.append(OrganPrompt(v, boxes))
            res = segment_prompts(seg, target, prompts)
            pred = sitk.GetArrayFromImage(res.labels)
            for j, (k, v) in enumerate(organs, start=1):
                rows.append({"case": case.case_id, "organ": v, "mode": mode, "volume_ml": float((truth == k).sum() * vox_ml),
                             "dice": dice(pred == j, truth == k)})
    return rows


def summarize(rows: list[dict[str, Any]], min_ml: float = 20.0) -> dict[str, dict[str, float]]:
    """Mean Dice per mode, over all organs and over organs of at least ``min_ml``."""
    out: dict[str, dict[str, float]] = {}
    for mode in sorted({r["mode"] for r in rows}):
        sel = [r for r in rows if r["mode"] == mode]
        big = [r["dice"] for r in sel if r["volume_ml"] >= min_ml]
        out[mode] = {"n": len(sel), "mean_dice": float(np.mean([r["dice"] for r in sel])) if sel else float("nan"),
                     "n_large": len(big), "mean_dice_large": float(np.mean(big)) if big else float("nan")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the small segment-anything model on box prompts")
    p.add_argument("--data", required=True, help="data folder with manifest.csv")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--seconds", type=float, default=SamTrainConfig.seconds)
    p.add_argument("--steps", type=int, default=SamTrainConfig.steps)
    p.add_argument("--lr", type=float, default=SamTrainConfig.lr)
    p.add_argument("--slices", type=int, default=SamTrainConfig.slices_per_step)
    p.add_argument("--prompts", type=int, default=SamTrainConfig.prompts_per_slice)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--holdout", default="", help="case ids left out of training and evaluated (a,b)")
    p.add_argument("--init", help="start from this checkpoint")
    p.add_argument("--release", default="sam-vit-tiny-v0", help="version prefix stored in the checkpoint")
    p.add_argument("--eval-cases", default="", help="extra case ids to evaluate after training (a,b)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    holdout = [c.strip() for c in args.holdout.split(",") if c.strip()]
    cases = labelled_ct_cases(args.data)
    unknown = set(holdout) - {c.case_id for c in cases}
    if unknown:
        p.error(f"--holdout: not labelled CT cases: {sorted(unknown)}")
    train_cases = [c for c in cases if c.case_id not in holdout]
    cfg = SamTrainConfig(seconds=args.seconds, steps=args.steps, lr=args.lr, slices_per_step=args.slices,
                         prompts_per_slice=args.prompts, seed=args.seed)
    t0 = time.perf_counter()
    model = load_sam2d(args.init) if args.init else Sam2D(SAM_VIT_TINY)
    data = prepare_slices_for_training(train_cases, model.config, cfg.min_pixels, cfg.margin_slices)
    prep_s = time.perf_counter() - t0
    logger.info("prepared %d slices of %d cases in %.1f s", len(data), len(train_cases), prep_s)
    t1 = time.perf_counter()
    model, history = train_sam2d(data, cfg, model)
    train_s = time.perf_counter() - t1
    command = "python -m uae_ray.train.sam2d " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"release": args.release, "trained_on": [c.case_id for c in train_cases], "holdout": holdout,
            "init": args.init, "command": command, "steps": len(history), "train_seconds": round(train_s, 1),
            "prepare_seconds": round(prep_s, 1), "recipe": asdict(cfg), "threads": torch.get_num_threads(),
            "final_loss": float(np.mean([h["loss"] for h in history[-50:]])) if history else None}
    version = save_sam2d(model, args.out, meta)
    logger.info("wrote %s (%s): %d steps in %.0f s", args.out, version, len(history), train_s)
    report: dict[str, Any] = {"version": version, "meta": meta, "history": history[:: max(1, len(history) // 400)]}
    eval_ids = holdout + [c.strip() for c in args.eval_cases.split(",") if c.strip()]
    if eval_ids:
        te = time.perf_counter()
        saved = load_sam2d(args.out)  # evaluate exactly the written (float16) weights
        rows = evaluate_gt_boxes(saved, [c for c in cases if c.case_id in eval_ids])
        report["eval"] = {"cases": eval_ids, "rows": rows, "summary": summarize(rows), "seconds": time.perf_counter() - te}
        logger.info("evaluation on %s: %s", eval_ids, json.dumps(report["eval"]["summary"]))
    Path(str(args.out) + ".json").write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
