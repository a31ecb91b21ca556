"""Triton python-backend model ``uae_embedder``: a thin wrapper around ``uae_ray.models``.

Loads the embedding network with ``uae_ray.models.load_model`` and answers each request with
``uae_ray.models.embed_array``. The ``SEMANTIC`` output is added only for a model with a UAE
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

    def _embed(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        from uae_ray.models import embed_array

        if self.device.type == "cpu":
            return embed_array(self.model, volume)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(self.device)
        with torch.no_grad():
            out = self.model(x)
        return {k: v[0].float().cpu().numpy() for k, v in out.items()}

    def _respond(self, request) -> "pb_utils.InferenceResponse":
        volume = pb_utils.get_input_tensor_by_name(request, P.INPUT_VOLUME).as_numpy()
        if volume.ndim != 4 or volume.shape[0] != 1:
            raise ValueError(f"{P.INPUT_VOLUME} must have shape [1, Z, Y, X]; got {list(volume.shape)}")
        if min(volume.shape[1:]) < 1:
            raise ValueError(f"{P.INPUT_VOLUME} is empty: shape {list(volume.shape)}")
        out = self._embed(volume[0])
        tensors = [
            pb_utils.Tensor(P.OUTPUT_LOCAL, np.ascontiguousarray(out["local"], dtype=np.float32)),
            pb_utils.Tensor(P.OUTPUT_GLOBAL, np.ascontiguousarray(out["global"], dtype=np.float32)),
            pb_utils.Tensor(P.OUTPUT_VERSION, np.array([self.version.encode()], dtype=np.object_)),
            pb_utils.Tensor(P.OUTPUT_CONFIG, np.array([self.config_json.encode()], dtype=np.object_)),
        ]
        if "semantic" in out:  # optional output: only models with a semantic head have it
            tensors.append(pb_utils.Tensor(P.OUTPUT_SEMANTIC, np.ascontiguousarray(out["semantic"], dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list) -> list:
        """One response per request, in order; a failed request gets its own TritonError."""
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except Exception as exc:  # reported to that request's client, the others go on
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(exc)))
        return responses

    def finalize(self) -> None:
        """Release the model."""
        self.model = None
