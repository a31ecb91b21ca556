"""Triton python-backend model ``uae_embedder``: a thin wrapper around ``uae_ray.models``.

Loads the embedding network with ``uae_ray.models.load_model`` and answers the requests that
the dynamic batcher queued together with ``uae_ray.models.embed_batch`` (one forward pass per
volume shape). The ``SEMANTIC`` output is added only for a model with a UAE
semantic head (clients request it only when ``CONFIG`` says ``semantic_dim > 0``). Tensor and
parameter names are the constants of
``uae_ray.serving.protocol``. The stub must run with the venv's Python so that ``uae_ray``
imports (the local stack starts Triton that way, see ``uae_ray/stack/triton.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from uae_ray.serving import protocol as P
from uae_ray.serving.backend import instance_device, triton_error, weights_setting

MODEL_DIR = Path(__file__).resolve().parents[1]


def _load(model_config: dict[str, Any]):
    """The network of ``$UAE_CHECKPOINT``, else of the ``checkpoint`` parameter, else the
    shipped default (a shipped weights name such as ``tiny-ctmr-v1`` is passed on as it is)."""
    from uae_ray.models import SHIPPED_WEIGHTS, load_model

    return load_model(weights_setting(model_config, P.ENV_CHECKPOINT, P.PARAM_CHECKPOINT, SHIPPED_WEIGHTS, MODEL_DIR))


def _error(exc: Exception) -> "pb_utils.TritonError":
    return triton_error(pb_utils, "uae_embedder", exc)


class TritonPythonModel:
    """One model instance: the network on the instance's device."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the weights onto the device Triton gave this instance (CPU or GPU)."""
        config = json.loads(args["model_config"])
        self.device = instance_device(args, config, P.PARAM_NUM_THREADS)
        self.model = _load(config).to(self.device)
        self.version = self.model.version
        self.config_json = json.dumps(self.model.config.to_dict())
        pb_utils.Logger.log_info(f"uae_embedder: {self.version} on {self.device}")

    def _volume(self, request) -> np.ndarray:
        """The request's prepared volume, (Z, Y, X), checked."""
        volume = pb_utils.get_input_tensor_by_name(request, P.INPUT_VOLUME).as_numpy()
        if volume.ndim != 5 or volume.shape[:2] != (1, 1):
            raise ValueError(f"{P.INPUT_VOLUME} must have shape [1, 1, Z, Y, X] (batch, channel); got {list(volume.shape)}")
        if min(volume.shape[2:]) < 1:
            raise ValueError(f"{P.INPUT_VOLUME} is empty: shape {list(volume.shape)}")
        return volume[0, 0]

    def _response(self, out: dict[str, np.ndarray]) -> "pb_utils.InferenceResponse":
        tensors = [
            pb_utils.Tensor(P.OUTPUT_LOCAL, np.ascontiguousarray(out["local"][None], dtype=np.float32)),
            pb_utils.Tensor(P.OUTPUT_GLOBAL, np.ascontiguousarray(out["global"][None], dtype=np.float32)),
            pb_utils.Tensor(P.OUTPUT_VERSION, np.array([[self.version.encode()]], dtype=np.object_)),
            pb_utils.Tensor(P.OUTPUT_CONFIG, np.array([[self.config_json.encode()]], dtype=np.object_)),
        ]
        if "semantic" in out:  # optional output: only models with a semantic head have it
            tensors.append(pb_utils.Tensor(P.OUTPUT_SEMANTIC, np.ascontiguousarray(out["semantic"][None], dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list) -> list:
        """One response per request, in order. The dynamic batcher hands over the requests that
        queued together; those of one volume shape are embedded in one forward pass. A failed
        request (or shape group) gets its own TritonError, the others go on."""
        from uae_ray.models import embed_batch

        responses: list = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            try:
                volume = self._volume(request)
                groups.setdefault(volume.shape, []).append((i, volume))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(exc))
        for members in groups.values():
            try:
                outs = embed_batch(self.model, np.stack([v for _, v in members]))
                for (i, _), out in zip(members, outs):
                    responses[i] = self._response(out)
            except Exception as exc:  # reported to those requests' clients
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(exc))
        return responses

    def finalize(self) -> None:
        """Release the model."""
        self.model = None
