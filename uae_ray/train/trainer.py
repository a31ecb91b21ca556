"""The self-supervised trainer of the embedding network: model, optimiser, batch drawing,
augmentation and the local/global InfoNCE losses in one object (:class:`Trainer`), with a resume
state that makes a killed run continue exactly (weights, optimiser, progress and every RNG).

The loss is described in :mod:`uae_ray.train.loop`; the semantic head's prototype terms are in
:mod:`uae_ray.train.semantic_terms`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from uae_ray.atomic import atomic_path
from uae_ray.models.checkpoint import init_from_checkpoint
from uae_ray.models.ops import upsample_aligned
from uae_ray.models.registry import ARCHITECTURES, build_model
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.train.augment import RandomAffineView, RandomIntensity, RandomModalityShift, ViewGeometry, extract_labels, extract_view, sample_at
from uae_ray.train.config import DEFAULT_SEMANTIC_DIM, TrainConfig
from uae_ray.train.data import TrainVolume
from uae_ray.train.items import ViewPair, patient_groups, region_weights, remap_labels, view_body_mask
from uae_ray.train.losses import info_nce
from uae_ray.train.pairs import CrossModalPair, build_pairs
from uae_ray.train.sampling import find_correspondences, map_volume_positions, mine_negatives, stride_xyz
from uae_ray.train.semantic_terms import semantic_terms

logger = logging.getLogger(__name__)


#: Trainer attributes whose ``R`` generators are part of the resume state.
_AUGMENT_RNGS = ("views", "intensity", "modality_shift")

#: Config fields that may change between a run and its resumption (the budget may be extended).
_RESUME_FREE = frozenset({"steps", "seconds", "log_every"})


def build_train_model(config: TrainConfig, init: str | Path | None = None) -> torch.nn.Module:
    """The network to train: architecture ``config.model``, optionally initialised from ``init``.

    With ``semantic_weight == 0`` this is ``build_model(config.model, checkpoint=init)``
    (unchanged). With ``semantic_weight > 0`` the model gets a semantic head of
    ``semantic_dim`` channels (default :data:`DEFAULT_SEMANTIC_DIM`; ``sam-r18``: the published
    128-d UAE head) and ``init`` may be a checkpoint with or without one: without, every other
    weight is loaded and the head starts random (:func:`~uae_ray.models.checkpoint.
    init_from_checkpoint`, the only keys allowed to be missing are ``semantic_head.*``).

    Raises:
        ValueError: ``init`` does not fit (other architecture, or a semantic head of another width).
    """
    if config.semantic_weight <= 0:
        return build_model(config.model, checkpoint=init)
    base = build_model(config.model).config
    dim = config.semantic_dim or DEFAULT_SEMANTIC_DIM.get(base.arch, 32)
    if base.semantic_dim and base.semantic_dim != dim:
        raise ValueError(f"model {config.model!r} has a {base.semantic_dim}-d semantic head; semantic_dim={dim} asked")
    model = ARCHITECTURES[base.arch](replace(base, semantic_dim=dim))
    if init is not None:
        init_from_checkpoint(model, init)
    return model


@dataclass
class TrainState:
    """Progress of a training run (returned by :meth:`Trainer.fit`)."""

    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Self-supervised trainer (model, optimiser, augmentation and loss in one object).

    Args:
        model: The network to train (set to train mode).
        volumes: Prepared training volumes.
        config: Hyper-parameters.
        forward_module: Module used for the forward pass (e.g. a DistributedDataParallel wrapper
            of ``model``); default ``model``. Losses run on its parameters' device.
        pairs: Aligned CT-MR pairs for ``pair_prob``; default: found among ``volumes``
            (:func:`~uae_ray.train.pairs.build_pairs`) when ``pair_prob > 0``.
    """

    def __init__(
        self,
        model: EmbeddingNet,
        volumes: list[TrainVolume],
        config: TrainConfig,
        forward_module: torch.nn.Module | None = None,
        pairs: list[CrossModalPair] | None = None,
    ) -> None:
        if not volumes:
            raise ValueError("Trainer needs at least one training volume")
        self.model = model
        self.forward_module = forward_module if forward_module is not None else model
        self.device = next(model.parameters()).device
        self.volumes = volumes
        self.cfg = config
        self.rng = np.random.default_rng(config.seed)
        self.torch_gen = torch.Generator().manual_seed(config.seed)
        self.views = RandomAffineView(config.crop, config.max_rotation_deg, config.scale_range, config.max_offset_vox, seed=config.seed + 1)
        self.intensity = RandomIntensity(seed=config.seed + 2)
        self.modality_shift = RandomModalityShift(
            config.modality_shift_prob, config.modality_invert_prob, config.modality_shift_strength, seed=config.seed + 3
        )
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.spacing_mm = model.config.input_spacing_mm
        self.groups = patient_groups(volumes)
        self.group_weights = region_weights(self.groups, config.region_balance)
        if pairs is None:
            pairs = build_pairs(volumes, seed=config.seed) if config.pair_prob > 0 else []
        self.pairs = pairs
        if config.pair_prob > 0 and not pairs:
            logger.warning("pair_prob=%g but no aligned CT-MR pair among the volumes (modalities %s)", config.pair_prob, config.modalities)
        self.state = TrainState()
        self._air_shift = torch.tensor([1.0, 0.0]).reshape(2, 1, 1, 1)
        self.semantic = config.semantic_weight > 0
        if self.semantic and model.config.semantic_dim <= 0:
            raise ValueError(
                "semantic_weight > 0 needs a model with a semantic head (EmbeddingConfig.semantic_dim > 0); "
                "build it with build_train_model"
            )
        if self.semantic and not any(v.has_labels for v in volumes):
            logger.warning("semantic_weight=%g but no training volume has organ labels", config.semantic_weight)

    # -- resume ---------------------------------------------------------------------------------

    def resume_state(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimiser, progress and every RNG."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
            "rngs": {"rng": self.rng.bit_generator.state, "torch_gen": self.torch_gen.get_state(),
                     **{k: getattr(self, k).R.bit_generator.state for k in _AUGMENT_RNGS}},
            "config": asdict(self.cfg),
        }

    def save_resume(self, path: str | Path) -> None:
        """Write :meth:`resume_state` atomically to ``path``."""
        with atomic_path(path, ".pt") as tmp:
            torch.save(self.resume_state(), tmp)

    def load_resume(self, path: str | Path) -> None:
        """Continue from a file written by :meth:`save_resume` (same volumes and config).

        Raises:
            ValueError: the file was written with another training configuration.
        """
        doc = torch.load(path, map_location=self.device, weights_only=False)
        saved = {k: v for k, v in doc["config"].items() if k not in _RESUME_FREE}
        now = {k: v for k, v in asdict(self.cfg).items() if k not in _RESUME_FREE}
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise ValueError(f"{path}: written with another training configuration ({', '.join(diff)} differ)")
        self.model.load_state_dict(doc["model"])
        self.optimizer.load_state_dict(doc["optimizer"])
        self.state = TrainState(**doc["state"])
        self.rng.bit_generator.state = doc["rngs"]["rng"]
        self.torch_gen.set_state(doc["rngs"]["torch_gen"])
        for k in _AUGMENT_RNGS:
            getattr(self, k).R.bit_generator.state = doc["rngs"][k]

    # -- data -----------------------------------------------------------------------------------

    def _draw_views(self, centres: np.ndarray) -> tuple[ViewGeometry, ViewGeometry]:
        """Two random affine views around a random (jittered) centre, in the centres' frame."""
        centre = centres[self.rng.integers(len(centres))] + self.rng.uniform(-0.5, 0.5, 3)
        return self.views(centre)

    def _augment(self, raw: torch.Tensor, level: float) -> torch.Tensor:
        """Network input (1, D, H, W) of a raw view: modality shift (body only), then intensity."""
        x = self.modality_shift(raw[0:1], view_body_mask(raw, (1, 1, 1), level)[None])
        return self.intensity(x)

    def _make_item(
        self,
        vols: tuple[TrainVolume, TrainVolume],
        views: tuple[ViewGeometry, ViewGeometry],
        sampled: tuple[ViewGeometry, ViewGeometry],
    ) -> ViewPair:
        """Extract view ``i`` from ``vols[i]`` with geometry ``sampled[i]`` and augment it.

        ``views`` are the same views in the common frame (what the loss uses); ``sampled[i]``
        equals ``views[i]`` re-expressed in ``vols[i]``'s voxel frame.
        """
        # data holds intensity + 1 (air 0) so that zero padding outside the volume is air.
        raw = tuple(extract_view(v.data, g, pad_value=0.0) - self._air_shift for v, g in zip(vols, sampled))
        levels = (vols[0].body_level, vols[1].body_level)
        inputs = tuple(self._augment(r, lv) for r, lv in zip(raw, levels))
        labels, names = None, {}
        if self.semantic and vols[0].has_labels and vols[1].has_labels:
            stride = self.model.config.stride_zyx("semantic")
            la = extract_labels(vols[0].labels, sampled[0], stride).long()  # type: ignore[arg-type]
            lb = extract_labels(vols[1].labels, sampled[1], stride)  # type: ignore[arg-type]
            lb = lb.long() if vols[1] is vols[0] else remap_labels(lb, vols[1].label_names, vols[0].label_names)
            labels, names = (la, lb), dict(vols[0].label_names)
        return ViewPair(views, raw, inputs, levels, (vols[0].case_id, vols[1].case_id), labels, names)  # type: ignore[arg-type]

    def single_item(self, vol: TrainVolume) -> ViewPair:
        """Two random views of one volume."""
        views = self._draw_views(vol.centres)
        return self._make_item((vol, vol), views, views)

    def pair_item(self, pair: CrossModalPair) -> ViewPair:
        """Cross-modal item: view A from the CT, view B from the MR at the same world points.

        Both views are drawn in the CT voxel frame around a centre of the CT-MR overlap; view B
        is sampled from the MR through the grid origin offset (``pair.view_in_mr``).
        """
        va, vb = self._draw_views(pair.centres)
        return self._make_item((pair.ct, pair.mr), (va, vb), (va, pair.view_in_mr(vb)))

    def _pair_count(self, k: int) -> int:
        """How many of ``k`` batch items are CT-MR pairs (no RNG draw when pairs are off)."""
        if self.cfg.pair_prob <= 0 or not self.pairs:
            return 0
        return min(int(self.rng.binomial(k, min(1.0, self.cfg.pair_prob))), len(self.pairs))

    def make_batch(self) -> list[ViewPair]:
        """Draw ``batch_scans`` items of distinct patients (CT-MR pairs first, then volumes)."""
        k = min(self.cfg.batch_scans, len(self.groups))
        n_pairs = self._pair_count(k)
        pairs = [self.pairs[i] for i in self.rng.choice(len(self.pairs), n_pairs, replace=False)] if n_pairs else []
        taken = {p.patient for p in pairs}
        free = [g for g in self.groups if g[0].patient_key not in taken]
        p = None
        if self.group_weights is not None:
            w = np.array([self.group_weights[i] for i, g in enumerate(self.groups) if g[0].patient_key not in taken])
            p = w / w.sum()
        idx = self.rng.choice(len(free), k - n_pairs, replace=False, p=p)
        vols = [free[i][0] if len(free[i]) == 1 else free[i][self.rng.integers(len(free[i]))] for i in idx]
        return [self.pair_item(p) for p in pairs] + [self.single_item(v) for v in vols]

    # -- loss -----------------------------------------------------------------------------------

    def _level_loss(
        self,
        level: str,
        out_a: dict[str, torch.Tensor],
        out_b: dict[str, torch.Tensor],
        pair: ViewPair,
        flip: bool,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        ia, ib = (1, 0) if flip else (0, 1)
        view_a, view_b = pair.views[ia], pair.views[ib]
        raw_a, raw_b = pair.raw[ia], pair.raw[ib]
        mcfg = self.model.config
        stride = mcfg.stride_zyx(level)
        fa, fb = out_a[level], out_b[level]
        shape = tuple(fa.shape[1:])
        corr = find_correspondences(
            view_a, view_b, shape, stride, view_body_mask(raw_a, stride, pair.body_levels[ia]), raw_b[1],
            cfg.local_points if level == "local" else cfg.global_points, self.rng,
        )
        if len(corr) == 0:
            return fa.sum() * 0.0
        dev = fa.device
        x, y, z = corr.anchor_idx.to(dev).T
        anchor = fa[:, z, y, x].T
        positive = F.normalize(sample_at(fb, corr.target_pos.float().to(dev)).T, dim=1)
        # Negative pool: valid voxels of B's map (a random subset of at most candidate_pool).
        valid_b = torch.nonzero(raw_b[1, :: stride[0], :: stride[1], :: stride[2]].reshape(-1) > 0.99).reshape(-1)
        if len(valid_b) > cfg.candidate_pool:
            valid_b = valid_b[torch.randperm(len(valid_b), generator=self.torch_gen)[: cfg.candidate_pool]]
        pos_b = map_volume_positions(view_b, shape, stride)[valid_b]
        valid_b = valid_b.to(dev)
        cand = fb.reshape(fb.shape[0], -1).T[valid_b]
        dist = torch.cdist(corr.volume_pos.float(), pos_b.float()).to(dev) * self.spacing_mm
        ignore = cfg.local_ignore_mm if level == "local" else cfg.global_ignore_mm
        allowed = dist > ignore
        with torch.no_grad():
            rank = anchor @ cand.T
            if level == "local":
                gs = tuple(g // s for g, s in zip(mcfg.stride_zyx("global"), stride))  # z, y, x
                scale = stride_xyz(gs).float().to(dev)
                ga = F.normalize(sample_at(out_a["global"], corr.anchor_idx.float().to(dev) / scale).T, dim=1)
                gb = upsample_aligned(out_b["global"][None], gs, shape)[0].reshape(out_b["global"].shape[0], -1)
                rank = rank + ga @ gb[:, valid_b]
        if extra is not None and len(extra):
            cand = torch.cat([cand, extra], dim=0)
            allowed = torch.cat([allowed, torch.ones(len(corr), len(extra), dtype=torch.bool, device=dev)], dim=1)
            with torch.no_grad():
                rank = torch.cat([rank, anchor @ extra.T], dim=1)
        neg_idx = mine_negatives(rank, allowed, cfg.k_hard, cfg.k_random, self.torch_gen)
        return info_nce(anchor, positive, cand, neg_idx, allowed.gather(1, neg_idx), cfg.temperature)

    def compute_loss(self, batch: list[ViewPair]) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward all views of a batch and return (total loss, parts)."""
        x = torch.stack([inp for pair in batch for inp in pair.inputs]).to(self.device)  # (2B, 1, D, H, W)
        out = self.forward_module(x)
        per_view = [{k: v[i] for k, v in out.items()} for i in range(x.shape[0])]
        local_terms, global_terms = [], []
        for s, pair in enumerate(batch):
            oa, ob = per_view[2 * s], per_view[2 * s + 1]
            others = []
            for t, other in enumerate(batch):
                if t == s:
                    continue
                for v in (0, 1):
                    g = per_view[2 * t + v]["global"]
                    ok = view_body_mask(other.raw[v], self.model.config.stride_zyx("global"), other.body_levels[v])
                    ok = ok.reshape(-1).to(g.device)
                    others.append(g.reshape(g.shape[0], -1).T[ok])
            extra = torch.cat(others) if others else None
            for flip in (False, True):
                a, b = (ob, oa) if flip else (oa, ob)
                local_terms.append(self._level_loss("local", a, b, pair, flip))
                global_terms.append(self._level_loss("global", a, b, pair, flip, extra))
        loss_l = torch.stack(local_terms).mean()
        loss_g = torch.stack(global_terms).mean()
        total = loss_l + self.cfg.global_weight * loss_g
        parts = {"local": loss_l.item(), "global": loss_g.item()}
        if self.semantic:
            sem_terms = semantic_terms(batch, per_view, self.cfg, self.model.config.stride_zyx("semantic"), self.torch_gen)
            if sem_terms:
                loss_s = torch.stack(sem_terms).mean()
                total = total + self.cfg.semantic_weight * loss_s
                parts["semantic"] = loss_s.item()
            else:  # no labelled item: no term (the head gets no gradient, AdamW skips it)
                parts["semantic"] = 0.0
                if self.forward_module is not self.model:  # DDP needs every parameter in the graph
                    total = total + 0.0 * out["semantic"].sum()
            parts["semantic_terms"] = float(len(sem_terms))
        return total, {"loss": total.item(), **parts}

    # -- optimisation ---------------------------------------------------------------------------

    def _lr(self, progress: float) -> float:
        cfg = self.cfg
        warm = min(1.0, (self.state.step + 1) / max(1, cfg.warmup_steps))
        return cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _progress(self) -> float:
        p = self.state.step / max(1, self.cfg.steps)
        if self.cfg.seconds:
            p = max(p, self.state.elapsed_s / self.cfg.seconds)
        return p

    def step(self) -> dict[str, float]:
        """One optimisation step; returns the loss parts."""
        self.forward_module.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self._progress())
        loss, parts = self.compute_loss(self.make_batch())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.state.step += 1
        return parts

    def fit(self, on_log: Callable[[dict[str, float]], None] | None = None, resume_path: str | Path | None = None,
            resume_every_s: float = 300.0) -> TrainState:
        """Train until ``steps`` or ``seconds`` is reached; log every ``log_every`` steps.

        With ``resume_path`` the resume state (:meth:`save_resume`) is written there at the
        first log line after every ``resume_every_s`` seconds and at the end, so a killed run
        loses at most that much work.
        """
        cfg = self.cfg
        t0 = time.perf_counter() - self.state.elapsed_s
        t_saved = time.perf_counter()
        t_log, s_log = time.perf_counter(), self.state.step
        run = {"loss": 0.0, "local": 0.0, "global": 0.0}
        n_run = 0
        # Semantic loss: averaged over the steps that had a labelled item (a window without one
        # repeats the last value, so every record has the key and the curves stay aligned).
        sem_sum, sem_n, sem_last = 0.0, 0, 0.0
        while self.state.step < cfg.steps and (cfg.seconds is None or self.state.elapsed_s < cfg.seconds):
            parts = self.step()
            self.state.elapsed_s = time.perf_counter() - t0
            for k in run:
                run[k] += parts[k]
            n_run += 1
            if parts.get("semantic_terms"):
                sem_sum, sem_n = sem_sum + parts["semantic"], sem_n + 1
            if self.state.step % cfg.log_every == 0 or self.state.step == cfg.steps:
                now = time.perf_counter()
                rec = {k: v / n_run for k, v in run.items()}
                if self.semantic:
                    sem_last = sem_sum / sem_n if sem_n else sem_last
                    rec.update(semantic=sem_last, semantic_steps=float(sem_n))
                rec.update(step=self.state.step, steps_per_s=(self.state.step - s_log) / max(now - t_log, 1e-9),
                           elapsed_s=self.state.elapsed_s, lr=self.optimizer.param_groups[0]["lr"])
                self.state.history.append(rec)
                sem_text = f" semantic {rec['semantic']:.4f} ({sem_n}/{n_run} steps)" if self.semantic else ""
                logger.info(
                    "step %d loss %.4f (local %.4f global %.4f%s) %.2f steps/s lr %.2e elapsed %.0fs",
                    rec["step"], rec["loss"], rec["local"], rec["global"], sem_text, rec["steps_per_s"], rec["lr"],
                    rec["elapsed_s"],
                )
                if resume_path is not None and now - t_saved >= resume_every_s:
                    self.save_resume(resume_path)
                    t_saved = now
                if on_log is not None:
                    on_log(rec)
                t_log, s_log, n_run = now, self.state.step, 0
                run = dict.fromkeys(run, 0.0)
                sem_sum, sem_n = 0.0, 0
        if resume_path is not None:
            self.save_resume(resume_path)
        return self.state
