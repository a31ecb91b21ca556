"""Training: the embedding network's self-supervised loop and the small segment-anything model.

``loop`` is the entry point of the embedding's plain torch training (``python -m uae_ray.train.loop``:
prepare the cases, train, save checkpoint and report) over ``trainer`` (the :class:`Trainer`:
batches, losses, optimisation, resume state), ``config`` (:class:`TrainConfig` and its flags),
``items`` (two views with a known correspondence) and ``semantic_terms`` (the semantic head's loss);
``ray_trainer`` wraps it in a Ray Train ``TorchTrainer`` (Ray is imported only there, lazily).
``pairs`` relates aligned CT-MR scans of one patient; ``config_io`` reads YAML configs;
``losses`` holds the InfoNCE and the UAE prototype loss of the semantic head
(``TrainConfig.semantic_weight``). ``sam2d`` / ``sam_data`` train the 2D segment-anything model.

The names below are imported on first use, so that a submodule that needs only torch (``sam2d``
training from prepared slices, e.g. on a GPU machine) imports without SimpleITK.
"""

import importlib
from typing import Any

_EXPORTS = {
    "RandomAffineView": "augment", "RandomIntensity": "augment", "RandomModalityShift": "augment",
    "ViewGeometry": "augment", "extract_labels": "augment", "extract_view": "augment",
    "TrainVolume": "data", "list_cases": "data", "load_ct_volumes": "data", "load_volumes": "data",
    "read_manifest": "data",
    "TrainConfig": "config", "Trainer": "trainer", "build_train_model": "trainer", "train": "loop",
    "CrossModalPair": "pairs", "build_pairs": "pairs", "find_ct_mr_pairs": "pairs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
