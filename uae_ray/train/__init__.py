"""Self-supervised (SAM-style) training of the embedding network.

``loop`` is the plain torch loop (``python -m uae_ray.train.loop``); ``ray_trainer`` wraps it in
a Ray Train ``TorchTrainer`` (Ray is imported only there, lazily).
"""

from uae_ray.train.augment import RandomAffineView, RandomIntensity, ViewGeometry, extract_view
from uae_ray.train.data import TrainVolume, list_cases, load_ct_volumes
from uae_ray.train.loop import TrainConfig, Trainer, train

__all__ = [
    "RandomAffineView",
    "RandomIntensity",
    "TrainConfig",
    "TrainVolume",
    "Trainer",
    "ViewGeometry",
    "extract_view",
    "list_cases",
    "load_ct_volumes",
    "train",
]
