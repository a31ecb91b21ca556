"""Embedding network, its registry and checkpoint I/O (no Ray/Triton/S3 imports)."""

from uae_ray.models.checkpoint import default_checkpoint, read_checkpoint, save_checkpoint
from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.inference import embed_array
from uae_ray.models.registry import MODEL_REGISTRY, build_model, build_tiny, load_model
from uae_ray.models.resnet_fpn import EmbeddingNet

__all__ = [
    "MODEL_REGISTRY",
    "EmbeddingConfig",
    "EmbeddingNet",
    "build_model",
    "build_tiny",
    "default_checkpoint",
    "embed_array",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]
