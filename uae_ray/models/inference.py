"""In-process inference helper used by the serving layer."""

from __future__ import annotations

import numpy as np
import torch

from uae_ray.models.resnet_fpn import EmbeddingNet


def resolve_device(device: str | None = None) -> torch.device:
    """``"auto"`` / ``None``: CUDA when this torch build has it, else the CPU; ``"cpu"``;
    ``"cuda"`` (or ``"cuda:N"``).

    Raises:
        ValueError: CUDA asked for but not available (one line that says which torch is installed).
    """
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device (torch {torch.__version__}); install a CUDA build of "
                         "torch (see the README) or use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device {device}: expected auto, cpu or cuda")
    return torch.device(name)


def embed_array(model: EmbeddingNet, array: np.ndarray) -> dict[str, np.ndarray]:
    """Embed one prepared volume.

    Args:
        model: An :class:`EmbeddingNet` (should be in eval mode).
        array: Prepared volume (Z, Y, X) float32 on the model grid (2 mm, air = -1).

    Returns:
        ``{"local": (Cl, ceil(Z/2), ceil(Y/2), ceil(X/2)), "global": (Cg, ~Z/8, ~Y/8, ~X/8)}``
        plus ``"semantic"`` (Cs, same grid as local) for a model with a semantic head; float32
        numpy arrays, L2-normalised over the channel axis.
    """
    if array.ndim != 3:
        raise ValueError(f"embed_array expects a (Z, Y, X) volume; got shape {array.shape}")
    return embed_batch(model, array[None])[0]


def embed_batch(model: EmbeddingNet, arrays: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Embed volumes of one shape in one forward pass (what a batching server does).

    Args:
        model: An :class:`EmbeddingNet` (eval mode), on its device.
        arrays: (B, Z, Y, X) float32 prepared volumes.

    Returns:
        One :func:`embed_array` dict per volume, in order.
    """
    if arrays.ndim != 4:
        raise ValueError(f"embed_batch expects (B, Z, Y, X) volumes; got shape {arrays.shape}")
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))[:, None].to(device)
    with torch.no_grad():
        out = model(x)
    host = {k: v.float().cpu().numpy() for k, v in out.items()}
    return [{k: v[i] for k, v in host.items()} for i in range(len(arrays))]
