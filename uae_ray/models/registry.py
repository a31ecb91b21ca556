"""Registry of embedding-network builders (segment-anything style)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from uae_ray.models.checkpoint import default_checkpoint, load_checkpoint_into, read_checkpoint
from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.resnet_fpn import EmbeddingNet


def _build(config: EmbeddingConfig, checkpoint: str | Path | None) -> EmbeddingNet:
    model = EmbeddingNet(config)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint)
    return model


def build_tiny(checkpoint: str | Path | None = None) -> EmbeddingNet:
    """Tiny CPU-sized ResNet-FPN (widths 16/32/64, 32-d local and global embeddings).

    Args:
        checkpoint: Optional checkpoint file to load (its config must be the tiny one).
    """
    return _build(EmbeddingConfig(name="tiny"), checkpoint)


MODEL_REGISTRY: dict[str, Callable[..., EmbeddingNet]] = {
    "tiny": build_tiny,
    "default": build_tiny,
}


def build_model(name: str = "default", checkpoint: str | Path | None = None) -> EmbeddingNet:
    """Build a registered architecture, optionally loading weights.

    Args:
        name: Registry key (``"tiny"``, ``"default"``).
        checkpoint: Optional checkpoint path.

    Raises:
        ValueError: For an unknown name (the message suggests the closest known one).
    """
    if name not in MODEL_REGISTRY:
        close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Known: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](checkpoint=checkpoint)


def load_model(checkpoint: str | Path | None = None) -> EmbeddingNet:
    """Load a trained model in eval mode; the architecture comes from the checkpoint's config.

    Args:
        checkpoint: Checkpoint file; ``None`` loads the shipped default
            (:func:`default_checkpoint`).
    """
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    cfg = EmbeddingConfig.from_dict(read_checkpoint(path)["config"])
    model = _build(cfg, path)
    return model.eval()
