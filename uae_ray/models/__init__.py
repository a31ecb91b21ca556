"""Embedding network, its registry and checkpoint I/O (no Ray/Triton/S3 imports)."""

from uae_ray.models.checkpoint import SHIPPED_WEIGHTS, default_checkpoint, read_checkpoint, resolve_checkpoint, save_checkpoint
from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.inference import embed_array, embed_batch
from uae_ray.models.official import load_official_checkpoint
from uae_ray.models.registry import MODEL_REGISTRY, build_model, build_sam_r18, build_tiny, load_model
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.models.sam_r18 import SamR18

__all__ = [
    "MODEL_REGISTRY",
    "EmbeddingConfig",
    "EmbeddingNet",
    "SamR18",
    "build_model",
    "build_sam_r18",
    "build_tiny",
    "SHIPPED_WEIGHTS",
    "default_checkpoint",
    "resolve_checkpoint",
    "embed_array",
    "embed_batch",
    "load_model",
    "load_official_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
