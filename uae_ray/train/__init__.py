"""Self-supervised (SAM-style, and UAE's CT-MR stage) training of the embedding network.

``loop`` is the plain torch loop (``python -m uae_ray.train.loop``); ``ray_trainer`` wraps it in
a Ray Train ``TorchTrainer`` (Ray is imported only there, lazily). ``pairs`` relates aligned
CT-MR scans of one patient; ``config_io`` reads YAML configs; ``losses`` holds the InfoNCE and
the UAE prototype loss of the semantic head (``TrainConfig.semantic_weight``).
"""

from uae_ray.train.augment import (
    RandomAffineView,
    RandomIntensity,
    RandomModalityShift,
    ViewGeometry,
    extract_labels,
    extract_view,
)
from uae_ray.train.data import TrainVolume, list_cases, load_ct_volumes, load_volumes, read_manifest
from uae_ray.train.loop import TrainConfig, Trainer, build_train_model, train
from uae_ray.train.pairs import CrossModalPair, build_pairs, find_ct_mr_pairs

__all__ = [
    "CrossModalPair",
    "RandomAffineView",
    "RandomIntensity",
    "RandomModalityShift",
    "TrainConfig",
    "TrainVolume",
    "Trainer",
    "ViewGeometry",
    "build_pairs",
    "build_train_model",
    "extract_labels",
    "extract_view",
    "find_ct_mr_pairs",
    "list_cases",
    "load_ct_volumes",
    "load_volumes",
    "read_manifest",
    "train",
]
