"""Plain PyTorch training loop for the SAM-style self-supervised embedding (no Ray needed).

Usage::

    python -m uae_ray.train.loop --data ../shared/data --steps 3000 --seconds 1800 \
        --threads 2 --out uae_ray/models/weights/uae_tiny_v0.pt

    python -m uae_ray.train.loop --data ../shared/data --config uae_ctmr.yaml --pair-prob 0.5

Each step takes ``batch_scans`` items of distinct patients, draws two random affine views of
each (known correspondence), embeds all views in one forward pass and adds a local InfoNCE loss
(4 mm map; positives at the exact corresponding location, negatives farther than
``local_ignore_mm``, hard ones ranked by local + global similarity, plus random ones) and a
global InfoNCE loss (16 mm map; negatives also from the other items of the batch).

An item is either one volume (CT, or MR with ``modalities`` including MR) seen twice, or, with
probability ``pair_prob``, an aligned CT-MR pair of one patient (UAE cross-modality stage): view
A from the CT, view B from the MR at the same world location (:mod:`uae_ray.train.pairs`).
With probability ``modality_shift_prob`` a view's intensities are inverted / histogram-shifted
(:class:`~uae_ray.train.augment.RandomModalityShift`) so that CT views look MR-like.

UAE semantic head (``semantic_weight > 0``): the model gets a semantic head
(``EmbeddingConfig.semantic_dim``, :func:`build_train_model`), and for every item whose scan has
an organ label map the prototype contrastive loss (:func:`~uae_ray.train.losses.prototype_loss`,
temperature ``semantic_temperature``) is added: organ prototypes of one view, voxels of the
other, both directions. The label maps follow each view's spatial transform exactly
(:func:`~uae_ray.train.augment.extract_labels`); items without labels add nothing.
Hyper-parameters come from :class:`TrainConfig`, a YAML file (``--config``) and CLI flags (which
win over the file).
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from uae_ray.models.checkpoint import init_from_checkpoint, read_checkpoint, save_checkpoint
from uae_ray.models.ops import upsample_aligned
from uae_ray.models.registry import ARCHITECTURES, build_model
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.train.augment import (
    RandomAffineView,
    RandomIntensity,
    RandomModalityShift,
    ViewGeometry,
    extract_labels,
    extract_view,
    sample_at,
)
from uae_ray.train.config_io import config_from_mapping, load_yaml_config
from uae_ray.atomic import atomic_path
from uae_ray.split import DEFAULT_SPLIT, load_split, read_case_patients
from uae_ray.train.data import TrainVolume, fetch_data, load_volumes
from uae_ray.train.losses import BACKGROUND, IGNORE, class_prototypes, info_nce, prototype_loss
from uae_ray.train.pairs import CrossModalPair, build_pairs
from uae_ray.volume import parse_modality
from uae_ray.train.sampling import find_correspondences, map_volume_positions, mine_negatives, stride_xyz

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of the self-supervised training.

    Attributes:
        steps: Maximum number of optimisation steps.
        seconds: Optional wall-clock budget (s); training stops at whichever limit comes first
            and the learning-rate schedule follows the larger of the two progress fractions.
        batch_scans: Scans per step (two views each).
        crop: View size (z, y, x) in 2 mm voxels.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay).
        warmup_steps: Warm-up length.
        weight_decay: AdamW weight decay.
        temperature: InfoNCE temperature. 0.1 rather than the published 0.5: with 32-d
            embeddings and ~200 mined negatives, 0.5 left all similarities near 1 (a 7-minute
            pilot gave 20.7 mm mean synthetic-warp MRE vs 10.7 mm for 0.1 at equal time).
        local_points: Anchors per view pair and direction at the local level.
        global_points: Anchors per view pair and direction at the global level.
        k_hard: Hard negatives per anchor.
        k_random: Random negatives per anchor.
        candidate_pool: At most this many (random, valid) voxels of the other view's map form
            the negative pool of one view pair and level.
        local_ignore_mm: Local negatives must be farther than this from the positive.
        global_ignore_mm: Global negatives (same scan) must be farther than this.
        global_weight: Weight of the global loss.
        max_rotation_deg: Per-view rotation range.
        scale_range: Per-view, per-axis scale range.
        max_offset_vox: Offset range between the two view centres (2 mm voxels per axis).
        seed: Seed of every RNG of the run.
        log_every: Progress line every this many steps.
        model: Registry name of the architecture.
        modalities: Modalities of the manifest to train on (``("CT",)``: the SAM recipe;
            ``("CT", "MR")``: UAE's cross-modality stage; MR is prepared as at inference).
        modality_shift_prob: Per view, probability of the UAE modality augmentation (random
            monotone histogram shift, then intensity inversion with ``modality_invert_prob``),
            applied to the body voxels before the ordinary intensity augmentation. 0 keeps the
            CT-only recipe bit-for-bit.
        modality_invert_prob: Probability of the inversion ``x -> -x`` within a modality shift.
        modality_shift_strength: Histogram-shift strength in [0, 1) (0: no remapping); the
            random piecewise-linear map's segment slopes lie within about ``(1 +- s) / (1 -+ s)``.
        pair_prob: Per batch item, probability that it is an aligned CT-MR pair of one patient
            (view A from the CT, view B from the MR at the same world location) instead of two
            views of one volume. Pairs are found among the loaded volumes (same manifest
            ``patient``, one CT and one MR), so ``modalities`` must include MR; without pairs
            every item is a single volume.
        semantic_weight: Weight of the UAE prototype (semantic) loss; 0 (default) leaves the
            recipe as it was: no semantic head is added and the term is not computed.
        semantic_dim: Channels of the semantic head added when ``semantic_weight > 0`` and the
            model (or the ``--init`` checkpoint) has none; 0: the architecture's default
            (:data:`DEFAULT_SEMANTIC_DIM`).
        semantic_temperature: Temperature of the prototype loss (UAE: 0.1).
        semantic_points: Anchor voxels per view pair and direction (balanced over organs).
        semantic_min_voxels: Minimum voxels (local map) of an organ in a view for a prototype.
        region_balance: Exponent ``b`` of the patient sampling weight ``n_region ** -b``
            (``n_region``: training patients of the patient's manifest region): 0 draws patients
            uniformly (a cohort of 140 head-neck CTs then fills 86 % of the items), 1 draws
            regions uniformly, 0.5 lies between.
    """

    steps: int = 3000
    seconds: float | None = None
    batch_scans: int = 2
    crop: tuple[int, int, int] = (64, 64, 64)
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    temperature: float = 0.1
    local_points: int = 256
    global_points: int = 64
    k_hard: int = 100
    k_random: int = 100
    candidate_pool: int = 4096
    local_ignore_mm: float = 8.0
    global_ignore_mm: float = 32.0
    global_weight: float = 1.0
    max_rotation_deg: float = 12.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    max_offset_vox: float = 16.0
    seed: int = 0
    log_every: int = 20
    model: str = "tiny"
    modalities: tuple[str, ...] = ("CT",)
    modality_shift_prob: float = 0.0
    modality_invert_prob: float = 0.5
    modality_shift_strength: float = 0.6
    pair_prob: float = 0.0
    semantic_weight: float = 0.0
    semantic_dim: int = 0
    semantic_temperature: float = 0.1
    semantic_points: int = 256
    semantic_min_voxels: int = 4
    region_balance: float = 0.0

    def __post_init__(self) -> None:
        self.crop = tuple(int(c) for c in self.crop)  # type: ignore[assignment]
        self.scale_range = tuple(float(v) for v in self.scale_range)  # type: ignore[assignment]
        if isinstance(self.modalities, str):
            self.modalities = (self.modalities,)
        self.modalities = tuple(dict.fromkeys(parse_modality(m, "TrainConfig.modalities") for m in self.modalities))
        for name in ("modality_shift_prob", "modality_invert_prob", "pair_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1]; got {getattr(self, name)}")
        if not 0.0 <= self.modality_shift_strength < 1.0:
            raise ValueError(f"TrainConfig.modality_shift_strength must be in [0, 1); got {self.modality_shift_strength}")
        if self.semantic_weight < 0 or self.semantic_dim < 0:
            raise ValueError(f"TrainConfig.semantic_weight and semantic_dim must be >= 0; got {self.semantic_weight}, {self.semantic_dim}")


#: Trainer attributes whose ``R`` generators are part of the resume state.
_AUGMENT_RNGS = ("views", "intensity", "modality_shift")

#: Config fields that may change between a run and its resumption (the budget may be extended).
_RESUME_FREE = frozenset({"steps", "seconds", "log_every"})


#: Semantic head width added for ``semantic_weight > 0`` when ``semantic_dim`` is 0, per architecture.
DEFAULT_SEMANTIC_DIM = {"resnet_fpn": 32, "sam-r18": 128}


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
class ViewPair:
    """One batch item: two views with a known correspondence.

    Attributes:
        views: Geometries of views A and B in one common volume frame (the volume's own voxels;
            for a CT-MR pair the CT's voxels), so ``views[1].from_volume(views[0].to_volume(u))``
            is the exact correspondence and volume-voxel distances times the spacing are mm.
        raw: Per view (2, D, H, W): normalised intensity before augmentation, validity.
        inputs: Per view (1, D, H, W): augmented intensity (the network input).
        body_levels: Per view, the body threshold of its source modality (anchor masks).
        case_ids: Per view, the source case.
        labels: Per view, the organ label map on the semantic (local) map grid, both in view
            A's volume's label ids (view B of a CT-MR pair is mapped by organ name; labels with
            no counterpart are :data:`~uae_ray.train.losses.IGNORE`); ``None`` when the item
            has no labels or the semantic loss is off.
        label_names: Label id -> organ name for ``labels``.
    """

    views: tuple[ViewGeometry, ViewGeometry]
    raw: tuple[torch.Tensor, torch.Tensor]
    inputs: tuple[torch.Tensor, torch.Tensor]
    body_levels: tuple[float, float]
    case_ids: tuple[str, str]
    labels: tuple[torch.Tensor, torch.Tensor] | None = None
    label_names: dict[int, str] = field(default_factory=dict)


def remap_labels(labels: torch.Tensor, src_names: dict[int, str], dst_names: dict[int, str]) -> torch.Tensor:
    """Label ids of one scan mapped to another scan's ids by organ name.

    Args:
        labels: Integer label tensor in the ``src_names`` id space.
        src_names: Its id -> name map.
        dst_names: The target id -> name map.

    Returns:
        Long tensor: 0 stays 0, a named organ gets the target's id, anything else
        :data:`~uae_ray.train.losses.IGNORE`.
    """
    by_name = {n: i for i, n in dst_names.items()}
    size = max([int(labels.max()) if labels.numel() else 0, *src_names]) + 1
    lookup = torch.full((size,), IGNORE, dtype=torch.long)
    lookup[BACKGROUND] = BACKGROUND
    for i, n in src_names.items():
        if n in by_name:
            lookup[i] = by_name[n]
    return lookup[labels.long()]


def patient_groups(volumes: Sequence[TrainVolume]) -> list[list[TrainVolume]]:
    """Volumes grouped by patient (first-appearance order); unknown patients are singletons."""
    groups: dict[str, list[TrainVolume]] = {}
    for v in volumes:
        groups.setdefault(v.patient_key, []).append(v)
    return list(groups.values())


def region_weights(groups: Sequence[Sequence[TrainVolume]], balance: float) -> list[float] | None:
    """Sampling weight of each patient group, ``n_region ** -balance`` (``None`` for 0: uniform)."""
    if balance <= 0:
        return None
    regions = [g[0].region for g in groups]
    counts = {r: regions.count(r) for r in set(regions)}
    return [counts[r] ** -float(balance) for r in regions]


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
        x = self.modality_shift(raw[0:1], self._body_mask(raw, (1, 1, 1), level)[None])
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

    @staticmethod
    def _body_mask(raw: torch.Tensor, stride: tuple[int, int, int], level: float) -> torch.Tensor:
        """(z, y, x) bool on a (z, y, x) ``stride`` subsampling of a raw view: valid and in the body."""
        sub = raw[:, :: stride[0], :: stride[1], :: stride[2]]
        return (sub[1] > 0.99) & (sub[0] > level)

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
            view_a, view_b, shape, stride, self._body_mask(raw_a, stride, pair.body_levels[ia]), raw_b[1],
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
                    ok = self._body_mask(other.raw[v], self.model.config.stride_zyx("global"), other.body_levels[v])
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
            sem_terms = self._semantic_terms(batch, per_view)
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

    def _semantic_labels(self, pair: ViewPair, v: int, shape: tuple[int, ...]) -> torch.Tensor:
        """(N,) long labels of view ``v`` on the semantic map grid: organ id, background (0:
        unlabelled body voxel) or IGNORE (outside the field of view or the body)."""
        stride = self.model.config.stride_zyx("semantic")
        lab = pair.labels[v].clone()  # type: ignore[index]
        if tuple(lab.shape) != tuple(shape):
            raise ValueError(f"label map {tuple(lab.shape)} does not match the semantic map {tuple(shape)}")
        raw = pair.raw[v]
        valid = raw[1, :: stride[0], :: stride[1], :: stride[2]] > 0.99
        body = self._body_mask(raw, stride, pair.body_levels[v])
        lab[~valid] = IGNORE
        lab[(lab == BACKGROUND) & ~body] = IGNORE
        return lab.reshape(-1)

    def _semantic_terms(self, batch: list[ViewPair], per_view: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Prototype-loss terms (both directions) of every labelled item of a batch.

        Negatives: the other organs (and the background) of the same item, plus the organ
        prototypes of the other items of the batch whose organ name differs from the anchor's
        (aligned by name: a liver of another scan is never a negative for a liver voxel).
        """
        cfg = self.cfg
        items = []
        for k, pair in enumerate(batch):
            if pair.labels is None:
                continue
            embs, labs = [], []
            for v in (0, 1):
                e = per_view[2 * k + v]["semantic"]
                embs.append(e.reshape(e.shape[0], -1).T)
                labs.append(self._semantic_labels(pair, v, tuple(e.shape[1:])).to(e.device))
            items.append((embs, labs, pair.label_names))
        if not items:
            return []
        codes: dict[str, int] = {}

        def code(names: dict[int, str], i: int) -> int:
            return codes.setdefault(names.get(i, f"label_{i}"), len(codes))

        protos = []  # per item: organ prototypes of view A and their name codes (cross-scan negatives)
        for embs, labs, names in items:
            ids, counts = torch.unique(labs[0][labs[0] > BACKGROUND], return_counts=True)
            ids = ids[counts >= cfg.semantic_min_voxels]
            vec = class_prototypes(embs[0], labs[0], ids)
            protos.append((vec, torch.tensor([code(names, i) for i in ids.tolist()], dtype=torch.long, device=vec.device)))
        terms = []
        for j, (embs, labs, names) in enumerate(items):
            others = [protos[i] for i in range(len(items)) if i != j and len(protos[i][1])]
            extra, extra_ok = None, None
            if others:
                extra = torch.cat([o[0] for o in others])
                extra_codes = torch.cat([o[1] for o in others])
                top = max(int(max(lab.max() for lab in labs)), 0)
                lookup = torch.tensor([code(names, i) if i > 0 else -1 for i in range(top + 1)], dtype=torch.long,
                                      device=extra.device)

                def extra_ok(ids: torch.Tensor, lookup=lookup, extra_codes=extra_codes) -> torch.Tensor:
                    return extra_codes[None, :] != lookup[ids][:, None]

            for a, b in ((0, 1), (1, 0)):
                t = prototype_loss(embs[a], labs[a], embs[b], labs[b], cfg.semantic_temperature, cfg.semantic_points,
                                   cfg.semantic_min_voxels, True, extra, extra_ok, self.torch_gen)
                if t is not None:
                    terms.append(t)
        return terms

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


def train(
    data_dir: str | Path,
    config: TrainConfig,
    out: str | Path | None = None,
    threads: int | None = None,
    command: str | None = None,
    init: str | Path | None = None,
    release: str = "v0",
    split: str | None = DEFAULT_SPLIT,
    resume: bool = False,
) -> tuple[EmbeddingNet, TrainState]:
    """Prepare the cases of ``data_dir`` (``config.modalities``), train, and optionally save the
    checkpoint and its training report (``<out>.html`` and ``<out>.png``: loss curves).

    Args:
        data_dir: Data folder with ``manifest.csv``.
        config: Hyper-parameters.
        out: Checkpoint path to write (``None``: do not save).
        threads: ``torch.set_num_threads`` value (``None``: leave as is).
        command: Command line recorded in the checkpoint metadata.
        init: Checkpoint to start from (continue training); ``None``: random initialisation.
        release: Release tag of the version string (``<model>-<release>+<sha8>``).
        split: Patient split (:mod:`uae_ray.split`) whose *train* side is used; ``None``: every
            case of ``data_dir`` (then no figure on these patients is leave-patient-out).
        resume: Continue from ``<out minus .pt>.resume.pt`` where it exists (written every
            5 minutes and at the end of every run with ``out``); the budget ``seconds`` counts
            the time of all runs together.

    Returns:
        ``(model in eval mode, final TrainState)``.
    """
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    data_dir = fetch_data(data_dir)
    case_ids = None
    if split is not None:
        case_ids = load_split(split).cases(read_case_patients(data_dir), "train")
        logger.info("split %s: training on the %d cases of its train side", split, len(case_ids))
    volumes = load_volumes(data_dir, config.modalities, labels=config.semantic_weight > 0, case_ids=case_ids)
    logger.info("prepared %d %s volumes in %.1fs", len(volumes), "/".join(config.modalities), time.perf_counter() - t0)
    if config.semantic_weight > 0:
        logger.info("semantic loss on: %d of %d volumes have organ labels", sum(v.has_labels for v in volumes), len(volumes))
    model = build_train_model(config, init)
    if init is not None:
        logger.info("starting from %s (%s)", init, model.version)
        model.train()
    trainer = Trainer(model, volumes, config)
    resume_path = Path(out).with_suffix(".resume.pt") if out is not None else None
    if resume and resume_path is not None and resume_path.is_file():
        trainer.load_resume(resume_path)
        logger.info("resumed from %s at step %d (%.0f s trained)", resume_path, trainer.state.step, trainer.state.elapsed_s)
    state = trainer.fit(resume_path=resume_path)
    model.eval()
    if out is not None:
        last = state.history[-1] if state.history else {}
        meta = {
            "trained_on": sorted({v.case_id for v in volumes} | set(_init_trained_on(init))),
            "init": str(init) if init is not None else "",
            "split": split or "",
            "cross_modal_pairs": [list(p.case_ids) for p in trainer.pairs],
            "command": command or "",
            "steps": state.step,
            "time_s": round(state.elapsed_s, 1),
            "final_loss": last.get("loss"),
            "train_config": asdict(config),
            "torch_threads": torch.get_num_threads(),
            "version": f"{config.model}-{release}",
        }
        model.version = save_checkpoint(model, out, meta)
        from uae_ray.report.training import training_report

        report = training_report(Path(out).with_suffix(".html"), state.history,
                                 {"version": model.version, **{k: v for k, v in meta.items() if k != "train_config"},
                                  "train_config": asdict(config)})
        logger.info("wrote %s (version %s) and %s", out, model.version, report)
    return model, state


def _init_trained_on(init: str | Path | None) -> list[str]:
    """Case ids the ``--init`` checkpoint was trained on (its lineage counts as seen data)."""
    if init is None:
        return []
    return list(read_checkpoint(init).get("meta", {}).get("trained_on", []))


#: TrainConfig fields settable on the command line (``--field-name``), with argparse options.
_CONFIG_FLAGS: dict[str, dict[str, Any]] = {
    "steps": {"type": int},
    "seconds": {"type": float, "help": "wall-clock budget in seconds"},
    "seed": {"type": int},
    "batch_scans": {"type": int},
    "lr": {"type": float},
    "temperature": {"type": float},
    "crop": {"type": int, "nargs": 3, "metavar": ("Z", "Y", "X")},
    "log_every": {"type": int},
    "modalities": {"nargs": "+", "metavar": "MOD", "help": "manifest modalities to train on, e.g. CT MR"},
    "modality_shift_prob": {"type": float, "metavar": "P", "help": "per-view probability of the inversion / histogram-shift augmentation"},
    "pair_prob": {"type": float, "metavar": "P", "help": "per-item probability of an aligned CT-MR pair"},
    "semantic_weight": {"type": float, "metavar": "W", "help": "weight of the UAE semantic (prototype) loss; 0 = off"},
    "semantic_dim": {"type": int, "metavar": "C", "help": "channels of the semantic head (0: architecture default)"},
    "region_balance": {"type": float, "metavar": "B", "help": "patient sampling weight n_region**-B (0: uniform over patients)"},
}


def add_config_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """Add ``--config FILE.yaml`` and the :class:`TrainConfig` flags (all default to "not given").

    ``defaults`` (the entry point's own defaults, passed again to :func:`config_from_args`) only
    changes the help text.
    """
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML file of TrainConfig fields (flags given here override it)")
    for name, opts in _CONFIG_FLAGS.items():
        opts = dict(opts)
        default = (defaults or {}).get(name, getattr(TrainConfig, name))
        opts["help"] = f"{opts.get('help', name.replace('_', ' '))} (default {default})"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **opts)


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The run's :class:`TrainConfig`: ``defaults``, then the ``--config`` YAML, then given flags."""
    cfg = config_from_mapping(TrainConfig, defaults or {})
    if getattr(args, "config", None):
        cfg = load_yaml_config(TrainConfig, args.config, base=cfg)
    given = {name: getattr(args, name) for name in _CONFIG_FLAGS if getattr(args, name, None) is not None}
    return config_from_mapping(TrainConfig, given, base=cfg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``python -m uae_ray.train.loop``."""
    p = argparse.ArgumentParser(description="Self-supervised training of the uae-ray embedding network (CPU/GPU, no Ray).")
    p.add_argument("--data", required=True, help="data folder with manifest.csv")
    p.add_argument("--out", default=None, help="checkpoint to write")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--init", default=None, help="checkpoint to continue training from")
    p.add_argument("--release", default="v0", help="release tag in the version string (default: %(default)s)")
    p.add_argument("--split", default=DEFAULT_SPLIT,
                   help="patient split whose train side is used, a name or a .json file; 'none': every case "
                        "(default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.resume.pt where it exists")
    add_config_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> TrainState:
    """Entry point; returns the final training state."""
    args = parse_args(argv)
    cfg = config_from_args(args)
    command = "python -m uae_ray.train.loop " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    split = None if args.split.lower() == "none" else args.split
    _, state = train(args.data, cfg, out=args.out, threads=args.threads, command=command, init=args.init,
                     release=args.release, split=split, resume=args.resume)
    return state


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
