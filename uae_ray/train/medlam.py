"""Self-supervised training of the MedLAM network (:mod:`uae_ray.models.medlam`).

Every step draws pairs of 64^3 patches at 3 mm from the same scan (views of
:class:`~uae_ray.train.augment.RandomAffineView`: small rotation and scale, so the patch
content differs a little while the world position of each patch centre stays known exactly):

* **Relative-position regression (RPR).** For each pair, the network's projections ``p_a``,
  ``p_b`` give ``offset = scale_mm * tanh(p_b - p_a)``; the target is the known world offset
  between the two patch centres (mm, x, y, z). Loss: smooth L1 on the offset in units of
  ``rpr_unit_mm``. Half the pairs are "far" (two independent body positions of the scan), half
  "near" (offset within ``near_offset_vox``), so both long jumps and short ones are learnt.
* **Multi-scale similarity (MSS).** On the near pairs, anchors of view A's feature maps (strides
  2, 4, 8) and their exact corresponding positions in view B
  (:func:`~uae_ray.train.sampling.find_correspondences`) give an InfoNCE loss
  (:func:`~uae_ray.train.losses.info_nce`) with the other anchors of the pair as negatives
  (those closer than two map voxels are left out).

The volumes are the CT cases of a data folder prepared once at 3 mm (no labels used).
:func:`train_medlam` runs the plain loop; :func:`run_ray_training` runs the same loop as a Ray
Train ``TorchTrainer`` worker (the storage helpers of :mod:`uae_ray.train.ray_trainer`: a folder
or s3://, checkpoints reported every ``report_every`` steps).

Usage::

    python -m uae_ray.train.medlam --data ../shared/data --seconds 900 --threads 2 \
        --out uae_ray/models/weights/medlam_tiny_v0.pt [--ray [--storage DIR|s3://...]]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from uae_ray.models.medlam import MedLAMConfig, MedLAMNet, save_medlam
from uae_ray.train.augment import RandomAffineView, RandomIntensity, ViewGeometry, extract_view, sample_at
from uae_ray.train.losses import info_nce
from uae_ray.train.sampling import find_correspondences

logger = logging.getLogger(__name__)

RUN_NAME = "medlam"
CHECKPOINT_FILE = "medlam.pt"


@dataclass
class MedLAMTrainConfig:
    """Hyper-parameters of MedLAM training.

    Attributes:
        steps: maximum optimiser steps.
        seconds: wall-clock budget (the run stops at whichever comes first).
        pairs_per_step: patch pairs per step (half near, half far).
        lr: AdamW learning rate (cosine decay over the budget after a short warm-up).
        near_offset_vox: near pairs: centre offset within +- this (3 mm voxels, per axis).
        max_rotation_deg: per-view rotation about each axis.
        scale_range: per-view, per-axis scale.
        rpr_unit_mm: the RPR loss is a smooth L1 on offsets in this unit.
        mss_weight: weight of the similarity loss.
        anchors: MSS anchors per pair and scale.
        temperature: InfoNCE temperature.
        seed: random seed.
        modalities: which cases of the data folder to use.
    """

    steps: int = 100000
    seconds: float = 900.0
    pairs_per_step: int = 6
    lr: float = 2e-3
    near_offset_vox: float = 20.0
    max_rotation_deg: float = 8.0
    scale_range: tuple[float, float] = (0.92, 1.08)
    rpr_unit_mm: float = 50.0
    mss_weight: float = 1.0
    anchors: int = 96
    temperature: float = 0.1
    seed: int = 0
    modalities: tuple[str, ...] = ("CT",)


@dataclass
class PatchVolume:
    """A scan prepared at 3 mm for MedLAM training.

    Attributes:
        case_id: case folder name.
        volume: (1, Z, Y, X) float32 tensor, normalised, air = -1 (identity direction, so
            x, y, z voxel offsets times the spacing are world offsets in mm).
        valid: (1, Z, Y, X) float32 tensor, 1 inside the original field of view.
        body: (N, 3) int64 voxel indices (x, y, z) of body voxels (patch centres are drawn here).
        spacing_mm: isotropic spacing.
    """

    case_id: str
    volume: torch.Tensor
    valid: torch.Tensor
    body: np.ndarray
    spacing_mm: float


def load_patch_volumes(
    data_dir: str | Path, modalities: tuple[str, ...] = ("CT",), spacing_mm: float = 3.0, max_centres: int = 20000
) -> list[PatchVolume]:
    """Prepares the cases of ``<data_dir>/manifest.csv`` at ``spacing_mm`` (images only)."""
    from uae_ray.train.data import body_level, read_manifest
    from uae_ray.volume import prepare_volume, read_image

    out = []
    rng = np.random.default_rng(0)
    for case in read_manifest(data_dir, modalities):
        prepared = prepare_volume(read_image(case.image_path), case.modality, spacing_mm=spacing_mm, pad_multiple=1)
        body = np.argwhere(prepared.valid & (prepared.array > body_level(case.modality)))[:, ::-1]  # x, y, z
        if len(body) == 0:
            logger.warning("%s: no body voxels; skipped", case.case_id)
            continue
        if len(body) > max_centres:
            body = body[rng.choice(len(body), max_centres, replace=False)]
        out.append(
            PatchVolume(
                case.case_id,
                torch.from_numpy(prepared.array)[None],
                torch.from_numpy(prepared.valid.astype(np.float32))[None],
                body.astype(np.int64),
                spacing_mm,
            )
        )
        logger.info("prepared %s at %.0f mm: %s", case.case_id, spacing_mm, tuple(prepared.array.shape))
    if not out:
        raise ValueError(f"{data_dir}: no usable {'/'.join(modalities)} cases")
    return out


@dataclass
class PatchPair:
    """Two patches of one scan, their geometries and the world offset from a's centre to b's."""

    a: torch.Tensor
    b: torch.Tensor
    valid_b: torch.Tensor
    view_a: ViewGeometry
    view_b: ViewGeometry
    offset_mm: np.ndarray
    near: bool


class PairSampler:
    """Draws :class:`PatchPair` s (seeded; its own generators, no global RNG state)."""

    def __init__(self, volumes: list[PatchVolume], config: MedLAMTrainConfig, patch_size: int) -> None:
        self.volumes = volumes
        self.config = config
        self.R = np.random.default_rng(config.seed)
        size = (patch_size,) * 3
        self.views = RandomAffineView(size, config.max_rotation_deg, config.scale_range, config.near_offset_vox,
                                      seed=config.seed + 1)
        self.intensity = RandomIntensity(seed=config.seed + 2)

    def __call__(self, near: bool) -> PatchPair:
        vol = self.volumes[int(self.R.integers(len(self.volumes)))]
        ca = vol.body[int(self.R.integers(len(vol.body)))].astype(np.float64)
        if near:
            va, vb = self.views(ca)
        else:
            cb = vol.body[int(self.R.integers(len(vol.body)))].astype(np.float64)
            va, _ = self.views(ca)
            vb, _ = self.views(cb)
        a = self.intensity(extract_view(vol.volume, va, pad_value=-1.0))
        b = self.intensity(extract_view(vol.volume, vb, pad_value=-1.0))
        valid_b = extract_view(vol.valid, vb, pad_value=0.0)[0]
        offset = (vb.centre - va.centre) * vol.spacing_mm
        return PatchPair(a, b, valid_b, va, vb, offset, near)


def mss_loss(
    feats_a: dict[int, torch.Tensor],
    feats_b: dict[int, torch.Tensor],
    pairs: list[PatchPair],
    config: MedLAMTrainConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """InfoNCE over the near pairs at every feature stride (mean over pairs and strides)."""
    losses = []
    for i, pair in enumerate(pairs):
        if not pair.near:
            continue
        for stride, fa_all in feats_a.items():
            fa, fb = fa_all[i], feats_b[stride][i]  # (C, z, y, x)
            shape = tuple(fa.shape[1:])
            anchor_ok = torch.ones(shape, dtype=torch.bool)
            corr = find_correspondences(pair.view_a, pair.view_b, shape, stride, anchor_ok, pair.valid_b,
                                        config.anchors, rng)
            if len(corr) < 8:
                continue
            ax, ay, az = corr.anchor_idx.T
            anchor = fa[:, az, ay, ax].T  # (n, C)
            pos = F.normalize(sample_at(fb, corr.target_pos.float()), dim=0).T  # (n, C)
            n = anchor.shape[0]
            d = torch.cdist(corr.volume_pos, corr.volume_pos)  # volume voxels
            neg_ok = d > 2.0 * stride  # not a near-duplicate of the positive
            neg_idx = torch.arange(n)[None].expand(n, n)
            losses.append(info_nce(anchor, pos, pos, neg_idx, neg_ok, config.temperature))
    if not losses:
        return torch.zeros(())
    return torch.stack(losses).mean()


@dataclass
class MedLAMTrainState:
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class MedLAMTrainer:
    """The training loop (plain; :func:`run_ray_training` wraps it in Ray Train).

    Args:
        model: the network (trained in place).
        volumes: prepared scans.
        config: :class:`MedLAMTrainConfig`.
    """

    def __init__(self, model: MedLAMNet, volumes: list[PatchVolume], config: MedLAMTrainConfig) -> None:
        self.model = model
        self.config = config
        self.sampler = PairSampler(volumes, config, model.config.patch_size)
        self.rng = np.random.default_rng(config.seed + 3)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
        self.state = MedLAMTrainState()
        self.volumes = volumes

    def _lr(self, frac: float) -> float:
        warm = min(1.0, (self.state.step + 1) / 30.0)
        return self.config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))

    def step(self) -> dict[str, float]:
        cfg = self.config
        n = cfg.pairs_per_step
        pairs = [self.sampler(near=i % 2 == 0) for i in range(n)]
        x = torch.stack([p.a for p in pairs] + [p.b for p in pairs])
        out = self.model(x)
        p = out["projection"]
        pred = self.model.offset(p[:n], p[n:])  # a -> b
        target = torch.tensor(np.stack([pp.offset_mm for pp in pairs]), dtype=torch.float32)
        rpr = F.smooth_l1_loss(pred / cfg.rpr_unit_mm, target / cfg.rpr_unit_mm)
        feats = out["features"]
        mss = mss_loss({s: f[:n] for s, f in feats.items()}, {s: f[n:] for s, f in feats.items()}, pairs, cfg, self.rng)
        loss = rpr + cfg.mss_weight * mss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.state.step += 1
        err = (pred.detach() - target).norm(dim=1).mean().item()
        return {"loss": float(loss.item()), "rpr": float(rpr.item()), "mss": float(mss.item()), "offset_err_mm": err}

    def fit(self, on_log: Callable[[dict[str, float]], None] | None = None, log_every: int = 20) -> MedLAMTrainState:
        cfg = self.config
        self.model.train()
        t0 = time.perf_counter() - self.state.elapsed_s
        window: list[dict[str, float]] = []
        while self.state.step < cfg.steps:
            elapsed = time.perf_counter() - t0
            if elapsed >= cfg.seconds:
                break
            for g in self.optimizer.param_groups:
                g["lr"] = self._lr(max(elapsed / cfg.seconds, self.state.step / cfg.steps))
            window.append(self.step())
            if self.state.step % log_every == 0:
                rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                rec.update(step=float(self.state.step), time_s=time.perf_counter() - t0)
                self.state.history.append(rec)
                logger.info("step %d %.0fs loss %.3f rpr %.3f mss %.3f offset err %.1f mm", self.state.step,
                            rec["time_s"], rec["loss"], rec["rpr"], rec["mss"], rec["offset_err_mm"])
                window = []
                if on_log is not None:
                    on_log(rec)
            self.state.elapsed_s = time.perf_counter() - t0
        self.model.eval()
        return self.state


def _meta(trainer: MedLAMTrainer, command: str) -> dict[str, Any]:
    last = trainer.state.history[-1] if trainer.state.history else {}
    return {
        "version": "medlam-tiny-v0",
        "trained_on": [v.case_id for v in trainer.volumes],
        "command": command,
        "steps": trainer.state.step,
        "time_s": round(trainer.state.elapsed_s, 1),
        "final": {k: round(v, 4) for k, v in last.items()},
        "train_config": asdict(trainer.config),
    }


def train_medlam(
    data_dir: str | Path, config: MedLAMTrainConfig, out: str | Path | None = None, command: str = "train_medlam",
    volumes: list[PatchVolume] | None = None,
) -> tuple[MedLAMNet, MedLAMTrainState]:
    """Trains a fresh MedLAM network with the plain loop and saves it to ``out``."""
    torch.manual_seed(config.seed)
    volumes = volumes or load_patch_volumes(data_dir, config.modalities)
    model = MedLAMNet(MedLAMConfig())
    trainer = MedLAMTrainer(model, volumes, config)
    trainer.fit()
    if out is not None:
        version = save_medlam(model, out, _meta(trainer, command))
        logger.info("saved %s (%s) after %d steps, %.0f s", out, version, trainer.state.step, trainer.state.elapsed_s)
    return model, trainer.state


def _ray_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: the plain loop, reporting metrics and a checkpoint every ``log_every``."""
    import ray.train

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    cfg = MedLAMTrainConfig(**config["train"])
    torch.manual_seed(cfg.seed)
    volumes = config.get("volumes") or load_patch_volumes(config["data_dir"], cfg.modalities)
    model = MedLAMNet(MedLAMConfig())
    trainer = MedLAMTrainer(model, volumes, cfg)

    def report(rec: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save_medlam(model, Path(tmp) / CHECKPOINT_FILE, _meta(trainer, config.get("command", "ray")))
            ray.train.report({k: float(v) for k, v in rec.items()}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    trainer.fit(on_log=report, log_every=int(config.get("report_every", 50)))
    with tempfile.TemporaryDirectory() as tmp:  # the final weights (eval mode)
        save_medlam(model, Path(tmp) / CHECKPOINT_FILE, _meta(trainer, config.get("command", "ray")))
        ray.train.report({"step": float(trainer.state.step)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_ray_training(
    data_dir: str | Path | None,
    config: MedLAMTrainConfig,
    out: str | Path | None = None,
    storage_path: str | Path | None = None,
    threads: int | None = None,
    report_every: int = 50,
    volumes: list[PatchVolume] | None = None,
    command: str = "ray",
) -> Any:
    """Runs the MedLAM loop in one Ray Train ``TorchTrainer`` worker; copies the last checkpoint
    to ``out``. Storage: a folder or an s3:// URI (:func:`uae_ray.train.ray_trainer.storage_filesystem`)."""
    import shutil

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from uae_ray.train.ray_trainer import storage_filesystem

    fs, root = storage_filesystem(storage_path or tempfile.mkdtemp(prefix="uae_ray_medlam_"))
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={
            "train": asdict(config), "data_dir": str(Path(data_dir).resolve()) if data_dir else None, "volumes": volumes,
            "threads": threads, "report_every": report_every, "command": command,
        },
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
        run_config=RunConfig(name=RUN_NAME, storage_path=root, storage_filesystem=fs),
    )
    started = False
    if not ray.is_initialized():
        # A fresh local instance unless RAY_ADDRESS names a cluster (a stale
        # /tmp/ray/ray_current_cluster of a stopped head would otherwise make Ray wait for it).
        import os

        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", num_cpus=max(2, threads or 1))
        started = True
    try:
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    if out is not None:
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(d) / CHECKPOINT_FILE, out)
        logger.info("copied the final MedLAM checkpoint to %s", out)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Self-supervised MedLAM training (RPR + multi-scale similarity)")
    p.add_argument("--data", required=True, help="data folder with manifest.csv")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--seconds", type=float, default=MedLAMTrainConfig.seconds)
    p.add_argument("--steps", type=int, default=MedLAMTrainConfig.steps)
    p.add_argument("--pairs", type=int, default=MedLAMTrainConfig.pairs_per_step)
    p.add_argument("--lr", type=float, default=MedLAMTrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ray", action="store_true", help="run the loop as a Ray Train worker")
    p.add_argument("--storage", default=None, help="Ray Train storage: folder or s3:// URI")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = MedLAMTrainConfig(steps=args.steps, seconds=args.seconds, pairs_per_step=args.pairs, lr=args.lr, seed=args.seed)
    command = "python -m uae_ray.train.medlam " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.ray:
        run_ray_training(args.data, cfg, args.out, args.storage, args.threads, command=command)
    else:
        train_medlam(args.data, cfg, args.out, command=command)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
