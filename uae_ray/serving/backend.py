"""What the Triton python-backend models of ``model_repo/`` share: parameters, weights paths,
the instance's device and threads, and one-line errors.

Nothing here imports Triton: a backend passes its ``triton_python_backend_utils`` module where
one is needed (it only exists inside the Triton stub process).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable


def parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a model's ``config.pbtxt`` as plain strings."""
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def weights_setting(model_config: dict[str, Any], env: str, param: str, shipped: Iterable[str],
                    model_dir: Path) -> str | None:
    """A weights setting: ``$env``, else the ``param`` parameter, else ``None`` (the shipped
    default). A shipped weights name is passed on as it is; a relative path is relative to the
    model's folder of ``model_repo/``."""
    value = os.environ.get(env) or parameters(model_config).get(param, "")
    if not value or value in set(shipped):
        return value or None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else model_dir / path)


def load_sam_weights(model_config: dict[str, Any], model_dir: Path):
    """The 2D segment-anything model of ``$UAE_SAM_CHECKPOINT`` / ``$UAE_SAM_KIND``, else of the
    ``checkpoint`` / ``kind`` parameters (:func:`~uae_ray.models.sam2d.load_sam2d`)."""
    from uae_ray.models.sam2d import SHIPPED_SAM_WEIGHTS, load_sam2d
    from uae_ray.serving import sam_protocol as P

    checkpoint = weights_setting(model_config, P.ENV_CHECKPOINT, P.PARAM_CHECKPOINT, SHIPPED_SAM_WEIGHTS, model_dir)
    kind = os.environ.get(P.ENV_KIND) or parameters(model_config).get(P.PARAM_KIND, "") or None
    return load_sam2d(checkpoint, kind)


def instance_device(args: dict[str, str], model_config: dict[str, Any], threads_param: str):
    """The torch device Triton gave this instance (CPU or GPU); sets the torch threads from the
    ``threads_param`` parameter when it is positive."""
    import torch

    threads = int(parameters(model_config).get(threads_param) or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    if args.get("model_instance_kind") == "GPU":
        return torch.device(f"cuda:{int(args.get('model_instance_device_id', 0))}")
    return torch.device("cpu")


def triton_error(pb_utils: Any, model_name: str, exc: Exception):
    """A one-line ``TritonError`` naming the model: bad input (``ValueError``) -> INVALID_ARG
    (HTTP 400, not retried by clients), anything else -> INTERNAL (HTTP 500)."""
    message = f"{model_name}: {exc.__class__.__name__}: {exc}".splitlines()[0]
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if isinstance(exc, ValueError) else "INTERNAL", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


__all__ = ["instance_device", "load_sam_weights", "parameters", "triton_error", "weights_setting"]
