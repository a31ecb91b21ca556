"""Hyper-parameters of the embedding training (:class:`TrainConfig`) and their command-line flags.

A run's configuration is the entry point's defaults, then a YAML file (``--config``,
:mod:`uae_ray.train.config_io`), then the flags given (:func:`config_from_args`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from uae_ray.train.config_io import config_from_mapping, load_yaml_config
from uae_ray.volume import parse_modality


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


#: Semantic head width added for ``semantic_weight > 0`` when ``semantic_dim`` is 0, per architecture.
DEFAULT_SEMANTIC_DIM = {"resnet_fpn": 32, "sam-r18": 128}


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
