"""Checkpoint I/O for :class:`EmbeddingNet`.

A checkpoint is a ``torch.save`` dict::

    {"config": EmbeddingConfig.to_dict(),
     "state_dict": {name: tensor (float16 for floating point)},
     "meta": {"trained_on", "command", "steps", "time_s", "version", ...}}
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from uae_ray.models.digest import file_sha256, version_string
from uae_ray.models.config import EmbeddingConfig
from uae_ray.models.resnet_fpn import EmbeddingNet

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT_NAME = "uae_tiny_uae_v3.pt"

#: Shipped weights by name (``--checkpoint NAME`` works wherever a path does); see MODEL_CARD.md.
SHIPPED_WEIGHTS = {
    "tiny-uae-v3": "uae_tiny_uae_v3.pt",  # the default: CT and MR, semantic head; (a) and (c) targets met
    "tiny-v0": "uae_tiny_v0.pt",  # the first default: CT only
    "tiny-ctmr-v1": "uae_tiny_ctmr_v1.pt",  # tiny-v0 + UAE's CT-MR stage: CT<->MR matching
    "tiny-uae-v2": "uae_tiny_uae_v2.pt",  # + UAE semantic head (tiny-uae-v3's initialisation)
    "tiny-lpo-a": "uae_tiny_lpo_a.pt",  # trained on the train side of the patients-v1 split only
    "tiny-lpo-b": "uae_tiny_lpo_b.pt",  # tiny-lpo-a + stronger deformation (no-regression figures measured)
    "tiny-lpo-d": "uae_tiny_lpo_d.pt",  # tiny-lpo-b continued: the best cross-patient head-neck model (d, e measured)
    "tiny-lpo-e": "uae_tiny_lpo_e.pt",  # tiny-lpo-d continued, regions balanced: the best lpo tracking (95.1 %)
}


def default_checkpoint() -> Path:
    """Path of the shipped default weights (``uae_ray/models/weights/uae_tiny_uae_v3.pt``)."""
    return WEIGHTS_DIR / DEFAULT_CHECKPOINT_NAME


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """A checkpoint path from a path, a shipped weights name (:data:`SHIPPED_WEIGHTS`) or None
    (the default)."""
    if checkpoint is None:
        return default_checkpoint()
    if str(checkpoint) in SHIPPED_WEIGHTS:
        return WEIGHTS_DIR / SHIPPED_WEIGHTS[str(checkpoint)]
    return Path(checkpoint).expanduser()


def save_checkpoint(
    model: EmbeddingNet, path: str | Path, meta: dict[str, Any] | None = None, half: bool = True
) -> str:
    """Write a checkpoint and return the model version string it will load with.

    Args:
        model: The network to save.
        path: Output file (parent folders are created).
        meta: Training metadata (``trained_on``, ``command``, ``steps``, ``time_s``, ``version``;
            ``version`` defaults to ``"<config.name>-v0"``).
        half: Store floating-point tensors as float16 (halves the file size).

    Returns:
        The version string ``"<meta version>+<first 8 hex of the file's sha256>"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta.setdefault("version", f"{model.config.name}-v0")
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    torch.save({"config": model.config.to_dict(), "state_dict": state, "meta": meta}, path)
    version = version_string(meta["version"], path)
    logger.info("saved checkpoint %s (%s)", path, version)
    return version


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the raw checkpoint dict (``config``, ``state_dict``, ``meta``) on the CPU.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not an uae-ray embedding checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not {"config", "state_dict"} <= set(data):
        raise ValueError(f"{path}: not an uae-ray embedding checkpoint (needs 'config' and 'state_dict')")
    return data


def load_checkpoint_into(model: EmbeddingNet, path: str | Path) -> EmbeddingNet:
    """Load weights from ``path`` into ``model`` (float32) and set ``model.version``.

    Raises:
        ValueError: If the checkpoint's config does not match ``model.config``.
    """
    data = read_checkpoint(path)
    cfg = EmbeddingConfig.from_dict(data["config"])
    if cfg != model.config:
        raise ValueError(f"{path}: checkpoint config {cfg} does not match model config {model.config}")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in data["state_dict"].items()}
    model.load_state_dict(state)
    meta = data.get("meta", {})
    model.version = f"{meta.get('version', cfg.name + '-v0')}+{file_sha256(path)[:8]}"
    model.meta = meta  # type: ignore[attr-defined]
    return model


#: Parameter-name prefix of the optional UAE semantic head (both architectures).
SEMANTIC_PREFIX = "semantic_head."


def init_from_checkpoint(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Initialise a model for training from a checkpoint that may lack its semantic head.

    The checkpoint's config must equal ``model.config``, or differ only in ``semantic_dim``
    being 0 in the file (a model trained without the semantic head, e.g. ``uae_tiny_v1b.pt``):
    every other weight is then loaded and the ``semantic_head.*`` parameters keep their random
    initialisation. Any other missing or unexpected key is an error (no silent partial loads).
    Official SAM / UAE mmcv files are read as :func:`~uae_ray.models.official.load_official_checkpoint`
    reads them.

    Args:
        model: An :class:`EmbeddingNet` or ``SamR18`` (with or without the semantic head).
        path: Checkpoint file.

    Returns:
        The names of the parameters / buffers left at their initialisation (empty when the file
        has every key).

    Raises:
        ValueError: The configs differ in more than the semantic head, or keys other than
            ``semantic_head.*`` are missing or unexpected.
    """
    from uae_ray.models.official import is_official_checkpoint, load_official_checkpoint, read_raw_checkpoint

    raw = read_raw_checkpoint(path)
    if is_official_checkpoint(raw):
        source = load_official_checkpoint(path, data=raw)
        cfg, state, meta = source.config, source.state_dict(), {"version": source.version.split("+")[0]}
    else:
        data = read_checkpoint(path)
        cfg, state, meta = EmbeddingConfig.from_dict(data["config"]), data["state_dict"], data.get("meta", {})
    target = model.config  # type: ignore[attr-defined]
    if cfg != target and not (cfg.semantic_dim == 0 and replace(cfg, semantic_dim=target.semantic_dim) == target):
        raise ValueError(
            f"{path}: checkpoint config {cfg} cannot initialise model config {target} "
            f"(only an added semantic head may differ)"
        )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in result.missing_keys if not k.startswith(SEMANTIC_PREFIX)]
    if bad_missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: keys do not fit the model: missing {bad_missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    model.version = f"{meta.get('version', cfg.name + '-v0')}+{file_sha256(path)[:8]}"  # type: ignore[attr-defined]
    model.meta = meta  # type: ignore[attr-defined]
    if result.missing_keys:
        logger.info("%s: initialised from %s; %d new semantic-head tensors left random", type(model).__name__, path,
                    len(result.missing_keys))
    return list(result.missing_keys)
