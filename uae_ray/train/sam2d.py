"""Training recipe of the small segment-anything model (``sam-vit-tiny``, :mod:`uae_ray.models.sam2d`).

Data (:mod:`uae_ray.train.sam_data`): the cases of a data folder, CT and MR, prepared exactly as
at inference; labelled slices with their organs, context slices of every scan, and
pseudo-objects (class-agnostic intensity regions) on every slice. Preparation needs SimpleITK;
``--save-slices`` writes the prepared set to one ``.npz`` and ``--slices-file`` trains from it, so
the loop runs where only torch is installed (a GPU machine).

Each step draws ``slices_per_step`` slices and up to ``prompts_per_slice`` objects on each; the
image is encoded once and every prompt is decoded from it (as at inference). The objects of a
slice are its organs, or (probability ``p_pseudo``, and always on a slice without organs) its
pseudo-objects. A prompt is one of

* a tight slice box jittered per side by ``box_jitter`` (default -5 % .. +15 %) of its size plus
  0 .. 2 px (MedSAM perturbs boxes by up to 20 px at 1024); a range reaching inward (e.g.
  -15 % .. +30 %) mimics the shifted boxes an automatic localizer gives;
* for organs, with probability ``p_wpl``: the organ's whole 3D box extent (a WPL box, as the
  localizer gives), jittered +-``wpl_jitter`` (10 %), so the model learns to take the organ's
  part in a loose box;
* a negative: a WPL box on a slice 1-3 slices beyond the organ, target empty (localized boxes
  overshoot the organ along z).

Augmentation (on the training device): gamma (log-uniform +-``gamma``), gain 0.9-1.1, offset
+-10 (of 255), Gaussian noise (sd up to ``noise_std``); horizontal flip; zoom ``zoom_min`` ..
``zoom_max`` (probability ``zoom_prob``; anchored top-left as the padding is, shifted when
zoomed in); rotation +-``rotate_deg`` about the slice centre. Loss: binary cross-entropy + soft
Dice (MedSAM's loss) on the mask logits, bilinearly upsampled from the low-resolution output to
the input size. AdamW, linear warm-up, cosine decay over the wall-clock budget; bfloat16
autocast on CUDA.

Usage (the shipped ``sam-vit-tiny-v1``: see ``weights/MODEL_CARD.md``)::

    python -m uae_ray.train.sam2d --data ../shared/data --save-slices runs/sam2d/slices.npz
    python -m uae_ray.train.sam2d --slices-file runs/sam2d/slices.npz --device cuda \
        --holdout ts_upper_abdomen,nsclc_lung1_001 --out runs/sam2d/holdout.pt   # 2D proxy Dice on the held-out
    python -m uae_ray.train.sam2d --data ../shared/data --holdout ts_upper_abdomen,nsclc_lung1_001 \
        --evaluate runs/sam2d/holdout.pt     # 3D Dice through the inference path (SimpleITK)
    python -m uae_ray.train.sam2d --slices-file runs/sam2d/slices.npz --device cuda --out sam_vit_tiny_v1.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from uae_ray.models.sam2d import SAM_VIT_TINY, Sam2D, load_sam2d, save_sam2d
from uae_ray.train.sam_data import SliceSet, model_input, sample_batch, tight_boxes, valid_area

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamTrainConfig:
    """Recipe parameters (defaults: the shipped model's)."""

    seconds: float = 520.0
    steps: int = 100000
    slices_per_step: int = 32
    prompts_per_slice: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    p_wpl: float = 0.3
    box_jitter: tuple[float, float] = (-0.05, 0.15)
    wpl_jitter: float = 0.1
    p_negative: float = 0.1
    p_pseudo: float = 0.5
    min_pixels: int = 8
    margin_slices: int = 3
    context_every: int = 4
    flip_prob: float = 0.5
    zoom_prob: float = 0.5
    zoom_min: float = 0.75
    zoom_max: float = 1.25
    rotate_deg: float = 15.0
    gamma: float = 0.3
    noise_std: float = 5.0
    seed: int = 0


def seg_loss(logits: torch.Tensor, targets: torch.Tensor, size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice on logits upsampled to ``size`` (per-sample Dice, mean over samples)."""
    up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)[:, 0]
    bce = F.binary_cross_entropy_with_logits(up, targets)
    p = torch.sigmoid(up)
    inter = (p * targets).sum(dim=(1, 2))
    dice = 1.0 - (2 * inter + 1.0) / (p.sum(dim=(1, 2)) + targets.sum(dim=(1, 2)) + 1.0)
    loss = bce + dice.mean()
    return loss, {"bce": float(bce.detach()), "dice": float(dice.mean().detach())}


def _save_resume(path: Path, model: Sam2D, opt: torch.optim.Optimizer, step: int, elapsed: float,
                 rng: np.random.Generator, history: list[dict[str, float]]) -> None:
    """Writes the loop's whole state (float32 weights, optimizer, step, seconds, RNGs) atomically."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_sam2d(data: SliceSet, cfg: SamTrainConfig, model: Sam2D | None = None, log_every: int = 50,
                resume_path: Path | None = None, save_every_s: float = 300.0) -> tuple[Sam2D, list[dict[str, float]]]:
    """The training loop on ``data``'s device (wall-clock budget ``cfg.seconds`` or ``cfg.steps``).

    With ``resume_path``, the loop's state is written there every ``save_every_s`` seconds and at
    the end, and a run finding that file continues from it (the budget counts the seconds
    already trained; the learning-rate schedule goes on where it stopped).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = (model if model is not None else Sam2D(SAM_VIT_TINY)).to(data.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if data.device.type == "cuda" else nullcontext()
    history: list[dict[str, float]] = []
    step, before = 0, 0.0
    if resume_path is not None and resume_path.is_file():
        state = torch.load(resume_path, map_location=data.device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, before, history = state["step"], state["elapsed"], state["history"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at step %d (%.0f s trained)", resume_path, step, before)
    t0 = time.perf_counter() - before
    saved_at = time.perf_counter()
    L = model.config.image_size
    while step < cfg.steps:
        elapsed = time.perf_counter() - t0
        if elapsed >= cfg.seconds:
            break
        if resume_path is not None and time.perf_counter() - saved_at >= save_every_s:
            _save_resume(resume_path, model, opt, step, elapsed, rng, history)
            saved_at = time.perf_counter()
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * elapsed / cfg.seconds))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sample_batch(data, cfg, model.config, rng)
        if batch is None:
            continue
        images, boxes, index, targets = batch
        with autocast:
            logits = model(images, boxes, index)
        loss, parts = seg_loss(logits.float(), targets, L)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        history.append({"step": step, "t": round(time.perf_counter() - t0, 1), "loss": float(loss.detach()), "lr": lr,
                        "prompts": int(len(boxes)), **parts})
        if step % log_every == 0 or step == 1:
            recent = history[-log_every:]
            logger.info("step %d  %.0fs  loss %.4f (bce %.4f dice %.4f)  lr %.2e", step, time.perf_counter() - t0,
                        np.mean([h["loss"] for h in recent]), np.mean([h["bce"] for h in recent]),
                        np.mean([h["dice"] for h in recent]), lr)
    if resume_path is not None:
        _save_resume(resume_path, model, opt, step, time.perf_counter() - t0, rng, history)
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_slices(model: Sam2D, data: SliceSet, batch: int = 32, min_pixels: int = 8) -> dict[str, Any]:
    """A quick 2D proxy of :func:`evaluate_gt_boxes` on prepared slices (no SimpleITK, any device).

    Every organ of at least ``min_pixels`` pixels on a slice is prompted with its own slice box
    (``gt-slice``) and with its 3D extent (``gt-wpl``); Dice is pooled per (case, organ) over its
    slices at model resolution, then averaged over organs.
    """
    model.eval()
    L, dev = model.config.image_size, data.device
    sums: dict[tuple[str, int, int], np.ndarray] = {}
    for i in range(0, len(data), batch):
        sl = slice(i, min(i + batch, len(data)))
        x = model_input(data.images[sl], valid_area(data.sizes[sl], L, dev), model.config)
        lab = data.labels[sl].long()
        emb = model.encode(x)
        for b in range(len(lab)):
            ids = torch.unique(lab[b])
            target = lab[b][None] == ids[ids > 0][:, None, None]
            keep = target.sum((1, 2)) >= min_pixels
            organs, target = [int(o) for o in ids[ids > 0][keep]], target[keep]
            if not organs:
                continue
            ci = int(data.case[sl.start + b])
            for mode in ("gt-slice", "gt-wpl"):
                bx = tight_boxes(target) if mode == "gt-slice" else torch.as_tensor(
                    np.stack([data.organ_boxes[(ci, o)][:4] for o in organs]), device=dev)
                logits, _ = model.decode(emb[b : b + 1].expand(len(organs), -1, -1, -1), bx.float())
                pred = F.interpolate(logits.float(), (L, L), mode="bilinear", align_corners=False)[:, 0] > 0
                inter = (pred & target).sum((1, 2)).cpu().numpy()
                ps, ts = pred.sum((1, 2)).cpu().numpy(), target.sum((1, 2)).cpu().numpy()
                for j, o in enumerate(organs):
                    acc = sums.setdefault((mode, ci, o), np.zeros(3))
                    acc += (inter[j], ps[j], ts[j])
    out: dict[str, Any] = {}
    for mode in ("gt-slice", "gt-wpl"):
        d = {f"{data.cases[c]}/{data.organ_names.get(o, o)}": (2 * v[0] / max(v[1] + v[2], 1), int(v[2]))
             for (m, c, o), v in sums.items() if m == mode}
        big = [dv for dv, n in d.values() if n >= 2000]
        out[mode] = {"n": len(d), "mean_dice": float(np.mean([dv for dv, _ in d.values()])) if d else float("nan"),
                     "n_large": len(big), "mean_dice_large": float(np.mean(big)) if big else float("nan"),
                     "per_organ": {k: round(dv, 4) for k, (dv, _) in sorted(d.items())}}
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def evaluate_gt_boxes(model: Sam2D, cases: Sequence[Any], min_voxels: int = 50) -> list[dict[str, Any]]:
    """3D Dice per organ on ``cases`` with ground-truth prompts: each slice's own box
    (``gt-slice``) and the true 3D box (``gt-wpl``), through the inference path."""
    import SimpleITK as sitk

    from uae_ray.tasks.segment import (LocalSliceSegmenter, OrganPrompt, TargetSlices, mask_index_box,
                                       mask_slice_boxes, orient, segment_prompts, wpl_slice_boxes)
    from uae_ray.volume import read_image, read_labels

    seg = LocalSliceSegmenter(model)
    rows = []
    for case in cases:
        image = read_image(case.image_path)
        labels_img = read_labels(case.labels_path)
        target = TargetSlices(image, case.modality, model.config)
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


def training_cases(data: str | Path, modalities: Sequence[str]) -> list[Any]:
    """The cases of ``data`` of ``modalities`` (labelled or not), sorted by id."""
    from uae_ray.data.cases import load_cases

    return [c for c in load_cases(data) if c.modality in {m.upper() for m in modalities}]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the small segment-anything model on box prompts")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="data folder with manifest.csv (prepares the slices; needs SimpleITK)")
    src.add_argument("--slices-file", help="prepared slices (.npz from --save-slices)")
    p.add_argument("--save-slices", help="write the prepared slices here")
    p.add_argument("--out", help="checkpoint to write (omit to only prepare or --evaluate)")
    p.add_argument("--evaluate", help="only evaluate this checkpoint (3D, on --holdout / --eval-cases; needs --data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--modalities", default="CT,MR", help="modalities of the cases used (default CT,MR)")
    p.add_argument("--context-every", type=int, default=SamTrainConfig.context_every, help="also keep every N-th slice of every case (0: none)")
    p.add_argument("--seconds", type=float, default=SamTrainConfig.seconds)
    p.add_argument("--steps", type=int, default=SamTrainConfig.steps)
    p.add_argument("--lr", type=float, default=SamTrainConfig.lr)
    p.add_argument("--slices", type=int, default=SamTrainConfig.slices_per_step)
    p.add_argument("--prompts", type=int, default=SamTrainConfig.prompts_per_slice)
    p.add_argument("--p-pseudo", type=float, default=SamTrainConfig.p_pseudo)
    p.add_argument("--rotate", type=float, default=SamTrainConfig.rotate_deg, help="rotation range, degrees")
    p.add_argument("--gamma", type=float, default=SamTrainConfig.gamma, help="log-gamma range")
    p.add_argument("--noise", type=float, default=SamTrainConfig.noise_std, help="max noise sd (of 255)")
    p.add_argument("--zoom", default=f"{SamTrainConfig.zoom_min},{SamTrainConfig.zoom_max}", help="zoom range a,b")
    p.add_argument("--zoom-prob", type=float, default=SamTrainConfig.zoom_prob)
    p.add_argument("--box-jitter", default="%g,%g" % SamTrainConfig.box_jitter,
                   help="per-side move of slice boxes, fractions of the size lo,hi (outward positive)")
    p.add_argument("--wpl-jitter", type=float, default=SamTrainConfig.wpl_jitter, help="WPL box jitter, +-fraction")
    p.add_argument("--p-wpl", type=float, default=SamTrainConfig.p_wpl, help="share of organ prompts given the WPL box")
    p.add_argument("--encoder-width", type=int, help="ViT width (default: the tiny model's)")
    p.add_argument("--encoder-depth", type=int, help="ViT depth (global attention in every second block)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--holdout", default="", help="case ids left out of training and evaluated (a,b)")
    p.add_argument("--init", help="start from this checkpoint")
    p.add_argument("--release", default="sam-vit-tiny-v1", help="version prefix stored in the checkpoint")
    p.add_argument("--eval-cases", default="", help="extra case ids to evaluate after training (a,b)")
    p.add_argument("--split", help="leave out every case of this split's test patients (e.g. patients-v1)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.resume.pt where it exists "
                   "(written every 5 minutes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    holdout = [c.strip() for c in args.holdout.split(",") if c.strip()]
    eval_ids = holdout + [c.strip() for c in args.eval_cases.split(",") if c.strip()]
    zoom_min, zoom_max = (float(v) for v in args.zoom.split(","))
    cfg = SamTrainConfig(seconds=args.seconds, steps=args.steps, lr=args.lr, slices_per_step=args.slices,
                         prompts_per_slice=args.prompts, p_pseudo=args.p_pseudo, rotate_deg=args.rotate,
                         gamma=args.gamma, noise_std=args.noise, zoom_min=zoom_min, zoom_max=zoom_max,
                         zoom_prob=args.zoom_prob, context_every=args.context_every, seed=args.seed,
                         box_jitter=tuple(float(v) for v in args.box_jitter.split(",")), wpl_jitter=args.wpl_jitter,
                         p_wpl=args.p_wpl)
    cases = training_cases(args.data, args.modalities.split(",")) if args.data else []
    if args.split and not args.data:
        p.error("--split needs --data (the manifest names the patients)")
    if args.split:
        from uae_ray.split import load_split

        test = load_split(args.split)
        n_all = len(cases)
        cases = [c for c in cases if not test.is_test(c.patient) or c.case_id in eval_ids]
        holdout += [c.case_id for c in cases if test.is_test(c.patient) and c.case_id not in holdout]
        logger.info("split %s: %d cases of test patients left out", args.split, n_all - len(cases))
    if args.evaluate:
        if not args.data or not eval_ids:
            p.error("--evaluate needs --data and --holdout or --eval-cases")
        rows = evaluate_gt_boxes(load_sam2d(args.evaluate), [c for c in cases if c.case_id in eval_ids])
        summary = summarize(rows)
        Path(args.evaluate + ".eval.json").write_text(json.dumps({"cases": eval_ids, "rows": rows, "summary": summary},
                                                                 indent=1, default=float))
        print(json.dumps(summary, indent=1))
        return 0
    model = load_sam2d(args.init) if args.init else Sam2D(replace(
        SAM_VIT_TINY, **({"encoder_embed_dim": args.encoder_width} if args.encoder_width else {}),
        **({"encoder_depth": args.encoder_depth,
            "global_attn_indexes": tuple(range(1, args.encoder_depth, 2))} if args.encoder_depth else {})))
    t0 = time.perf_counter()
    if args.slices_file:
        data = SliceSet.load(args.slices_file)
    else:
        from uae_ray.train.sam_data import prepare_training_slices

        data = prepare_training_slices(cases, model.config, cfg.margin_slices, cfg.context_every)
    prep_s = time.perf_counter() - t0
    logger.info("%d slices of %d cases in %.1f s", len(data), len(data.cases), prep_s)
    if args.save_slices:
        data.save(args.save_slices)
        logger.info("wrote %s", args.save_slices)
    if not args.out:
        return 0
    unknown = set(holdout) - set(data.cases)
    if unknown:
        p.error(f"--holdout: not among the cases: {sorted(unknown)}")
    train = data.subset(holdout, keep=False).to(args.device)
    t1 = time.perf_counter()
    resume_path = Path(args.out).with_suffix(".resume.pt") if args.resume else None
    model, history = train_sam2d(train, cfg, model, resume_path=resume_path)
    train_s = time.perf_counter() - t1
    command = "python -m uae_ray.train.sam2d " + " ".join(argv if argv is not None else sys.argv[1:])
    # the lineage counts: a model started from another has seen that one's cases too
    seen_before = (torch.load(args.init, map_location="cpu", weights_only=True).get("meta", {}).get("trained_on") or []
                   if args.init else [])
    meta = {"release": args.release, "trained_on": sorted(set(seen_before) | {data.cases[c] for c in train.case}),
            "holdout": holdout,
            "split": args.split, "init": args.init, "command": command, "steps": len(history), "train_seconds": round(train_s, 1),
            "prepare_seconds": round(prep_s, 1), "recipe": asdict(cfg), "device": str(train.device),
            "threads": torch.get_num_threads(), "slices": len(train),
            "final_loss": float(np.mean([h["loss"] for h in history[-50:]])) if history else None}
    version = save_sam2d(model.cpu(), args.out, meta)
    logger.info("wrote %s (%s): %d steps in %.0f s", args.out, version, len(history), train_s)
    report: dict[str, Any] = {"version": version, "meta": meta, "history": history[:: max(1, len(history) // 400)]}
    if eval_ids:
        saved = load_sam2d(args.out).to(args.device)  # evaluate exactly the written (float16) weights
        report["eval_slices"] = evaluate_slices(saved, data.subset(eval_ids).to(args.device))
        logger.info("2D evaluation on %s: %s", eval_ids, {k: round(v["mean_dice"], 3) for k, v in report["eval_slices"].items()})
        if cases:
            te = time.perf_counter()
            rows = evaluate_gt_boxes(saved.cpu(), [c for c in cases if c.case_id in eval_ids])
            report["eval"] = {"cases": eval_ids, "rows": rows, "summary": summarize(rows),
                              "seconds": time.perf_counter() - te}
            logger.info("evaluation on %s: %s", eval_ids, json.dumps(report["eval"]["summary"]))
    Path(str(args.out) + ".json").write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
