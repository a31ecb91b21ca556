"""Embedders behind one interface: in-process torch (:class:`LocalEmbedder`) and Triton
(:class:`TritonEmbedder`); both implement ``uae_ray.matching.Embedder``.

Importing this package is cheap (the Triton model imports :mod:`uae_ray.serving.protocol`);
the embedders are imported on first use.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uae_ray.serving.local import LocalEmbedder
    from uae_ray.serving.triton import TritonEmbedder, TritonEmbedderError, TritonUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["LocalEmbedder", "TritonEmbedder", "TritonEmbedderError", "TritonUnavailableError", "get_embedder"]

_LAZY = {
    "LocalEmbedder": "uae_ray.serving.local",
    "TritonEmbedder": "uae_ray.serving.triton",
    "TritonEmbedderError": "uae_ray.serving.triton",
    "TritonUnavailableError": "uae_ray.serving.triton",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=8)
def _cached(triton_url: str | None, checkpoint: str | None, device: str | None,
            options: tuple[tuple[str, Any], ...]) -> Any:
    if triton_url:
        from uae_ray.serving.triton import TritonEmbedder

        return TritonEmbedder(triton_url, **dict(options))
    from uae_ray.serving.local import LocalEmbedder

    return LocalEmbedder(checkpoint=checkpoint, device=device or "auto")


def get_embedder(triton_url: str | None = None, checkpoint: str | Path | None = None, device: str | None = None,
                 **options: Any):
    """The embedder for a Triton URL, or the in-process one when ``triton_url`` is empty.

    Embedders are cached per process (by URL, checkpoint and options), so Ray tasks that call
    this once per scan load the model or open the connection once per worker.

    Args:
        triton_url: Triton HTTP endpoint (``host:port``); ``None``/``""``: in-process torch.
        checkpoint: Checkpoint for the in-process model (``None``: shipped default). Ignored,
            with a warning, for Triton (the server's model is used).
        device: In-process model only: ``"auto"`` (default: CUDA when torch has it), ``"cpu"``,
            ``"cuda"``.
        **options: Passed to :class:`TritonEmbedder` (``model_name``, ``timeout_s``,
            ``retries``, ``backoff_s``).

    Returns:
        A :class:`TritonEmbedder` or :class:`LocalEmbedder`.
    """
    if triton_url and checkpoint is not None:
        logger.warning("checkpoint %s ignored: Triton at %s serves its own model", checkpoint, triton_url)
    if not triton_url and options:
        raise TypeError(f"options {sorted(options)} only apply to a Triton embedder")
    ckpt = None
    if not triton_url and checkpoint is not None:
        from uae_ray.models.checkpoint import resolve_checkpoint

        ckpt = str(resolve_checkpoint(checkpoint).resolve())
    return _cached(triton_url or None, ckpt, None if triton_url else device, tuple(sorted(options.items())))


get_embedder.cache_clear = _cached.cache_clear  # type: ignore[attr-defined]
