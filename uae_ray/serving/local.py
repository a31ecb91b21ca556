"""In-process embedder: the torch model in this process (no server)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from uae_ray.models import EmbeddingConfig, EmbeddingNet, embed_array, load_model
from uae_ray.models.inference import resolve_device

logger = logging.getLogger(__name__)


def check_volume(volume: np.ndarray) -> np.ndarray:
    """Validate an embedder input and return it as a C-contiguous float32 (Z, Y, X) array.

    Raises:
        ValueError: Not 3D, or an empty axis.
    """
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"embed expects a (Z, Y, X) volume; got shape {array.shape}")
    if min(array.shape) < 1:
        raise ValueError(f"embed got an empty volume of shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


class LocalEmbedder:
    """Implements the ``Embedder`` protocol with the model in this process.

    Args:
        model: A loaded :class:`EmbeddingNet`; ``None`` loads ``checkpoint``.
        checkpoint: Checkpoint for ``model=None`` (``None``: the shipped default weights).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``
            (:func:`~uae_ray.models.inference.resolve_device`).

    Attributes:
        version: Model version string (``"tiny-v0+<sha8>"``).
        config: The model's :class:`EmbeddingConfig`.
    """

    def __init__(self, model: EmbeddingNet | None = None, checkpoint: str | Path | None = None,
                 device: str | None = None) -> None:
        if model is None:
            model = load_model(checkpoint)
        elif checkpoint is not None:
            raise ValueError("give either a model or a checkpoint, not both")
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.version: str = model.version
        self.config: EmbeddingConfig = model.config
        logger.debug("local embedder %s on %s", self.version, self.device)

    def __repr__(self) -> str:
        return f"LocalEmbedder(version={self.version!r})"

    def embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        """Embed one prepared volume.

        Args:
            volume: (Z, Y, X) float32 on the model grid (2 mm, normalised intensities).

        Returns:
            ``{"local": (Cl, z, y, x), "global": (Cg, z, y, x)}`` float32, L2-normalised on C,
            plus ``"semantic"`` (Cs, z, y, x) when the model has a semantic head.
        """
        return embed_array(self.model, check_volume(volume))
