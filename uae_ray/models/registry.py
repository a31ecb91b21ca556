"""Registry of embedding-network builders (segment-anything style)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from uae_ray.models.checkpoint import load_checkpoint_into, read_checkpoint, resolve_checkpoint
from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.official import is_official_checkpoint, load_official_checkpoint, read_raw_checkpoint
from uae_ray.models.resnet_fpn import EmbeddingNet
from uae_ray.models.sam_r18 import ARCH as SAM_ARCH
from uae_ray.models.sam_r18 import SamR18, sam_r18_config
from uae_ray.models.medlam import build_medlam

#: Any embedding network of this package (same ``forward`` contract, ``config``, ``version``).
EmbeddingModel = EmbeddingNet | SamR18

#: Network class of each ``EmbeddingConfig.arch``.
ARCHITECTURES: dict[str, Callable[[EmbeddingConfig], EmbeddingModel]] = {
    "resnet_fpn": EmbeddingNet,
    SAM_ARCH: SamR18,
}


def _build(config: EmbeddingConfig, checkpoint: str | Path | None) -> EmbeddingModel:
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[config.arch](config)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint)  # type: ignore[arg-type]
    return model


def build_tiny(checkpoint: str | Path | None = None) -> EmbeddingNet:
    """Tiny CPU-sized ResNet-FPN (widths 16/32/64, 32-d local and global embeddings).

    Args:
        checkpoint: Optional checkpoint file to load (its config must be the tiny one).
    """
    return _build(EmbeddingConfig(name="tiny"), checkpoint)


def build_sam_r18(checkpoint: str | Path | None = None, semantic: bool = False) -> SamR18:
    """The published SAM / UAE network (3D ResNet-18 + FPN, 128-d embeddings).

    Args:
        checkpoint: Optional weights: an official mmcv checkpoint (``SAM.pth``,
            ``SAMv2_iter_20000.pth``, ``CrossSAM_iter_20000_ct_mr_inter_1.pth``; returned in eval
            mode) or an uae-ray checkpoint of a ``"sam-r18"`` model. With a checkpoint, the
            semantic head is present exactly when the file has one.
        semantic: Without a checkpoint: include the UAE semantic head. With one: require it.

    Raises:
        ValueError: If the checkpoint is of another architecture, or lacks the semantic head
            although ``semantic`` is set.
    """
    if checkpoint is None:
        return SamR18(sam_r18_config(semantic))
    data = read_raw_checkpoint(checkpoint)
    if is_official_checkpoint(data):
        model = load_official_checkpoint(checkpoint, data=data)
    else:
        cfg = EmbeddingConfig.from_dict(read_checkpoint(checkpoint)["config"])
        if cfg.arch != SAM_ARCH:
            raise ValueError(f"{checkpoint}: a {cfg.arch!r} checkpoint ({cfg.name!r}), not {SAM_ARCH!r}")
        model = SamR18(cfg)
        load_checkpoint_into(model, checkpoint)  # type: ignore[arg-type]
    if semantic and not model.has_semantic:
        raise ValueError(f"{checkpoint}: has no semantic head (a SAM, not a UAE checkpoint)")
    return model


def build_uae_r18(checkpoint: str | Path | None = None) -> SamR18:
    """The published UAE network: :func:`build_sam_r18` with the semantic head."""
    return build_sam_r18(checkpoint, semantic=True)


MODEL_REGISTRY: dict[str, Callable[..., EmbeddingModel]] = {
    "tiny": build_tiny,
    "default": build_tiny,
    SAM_ARCH: build_sam_r18,
    "uae-r18": build_uae_r18,
}

#: MedLAM (few-shot organ localization, :mod:`uae_ray.models.medlam`): not an embedding network
#: (its forward gives a projection and similarity maps), so it is registered under its own key.
MODEL_REGISTRY["medlam-tiny"] = build_medlam  # type: ignore[assignment]


def _build_sam_vit_tiny(checkpoint: str | Path | None = None):
    """The small 2D segment-anything model (:mod:`uae_ray.models.sam2d`; imported on use)."""
    from uae_ray.models.sam2d import build_sam_vit_tiny

    return build_sam_vit_tiny(checkpoint)


#: segment-anything (2D, box prompts; MedLSAM's segmenter): also not an embedding network.
#: Official ViT-B/L/H and MedSAM checkpoints load by path with ``sam2d.load_sam2d``.
MODEL_REGISTRY["sam-vit-tiny"] = _build_sam_vit_tiny  # type: ignore[assignment]


def build_model(name: str = "default", checkpoint: str | Path | None = None) -> EmbeddingModel:
    """Build a registered architecture, optionally loading weights.

    Args:
        name: Registry key (``"tiny"``, ``"default"``, ``"sam-r18"``, ``"uae-r18"``).
        checkpoint: Optional checkpoint path.

    Raises:
        ValueError: For an unknown name (the message suggests the closest known one).
    """
    if name not in MODEL_REGISTRY:
        close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Known: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](checkpoint=checkpoint)


def load_model(checkpoint: str | Path | None = None) -> EmbeddingModel:
    """Load a trained model in eval mode; the architecture comes from the checkpoint.

    Args:
        checkpoint: Checkpoint file: an uae-ray checkpoint (architecture from its config) or an
            official SAM/UAE mmcv checkpoint (:func:`~uae_ray.models.official.
            load_official_checkpoint`), a shipped weights name (``"tiny-ctmr-v1"``, see
            :data:`~uae_ray.models.checkpoint.SHIPPED_WEIGHTS`); ``None`` loads the shipped default
            (:func:`default_checkpoint`).
    """
    path = resolve_checkpoint(checkpoint)
    data = read_raw_checkpoint(path)
    if is_official_checkpoint(data):
        return load_official_checkpoint(path, data=data)
    cfg = EmbeddingConfig.from_dict(read_checkpoint(path)["config"])
    model = _build(cfg, path)
    return model.eval()
