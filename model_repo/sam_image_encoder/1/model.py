"""Triton python-backend model ``sam_image_encoder``: segment-anything's image encoder.

Loads the 2D segment-anything weights with ``uae_ray.models.sam2d.load_sam2d`` and answers a
batch of prepared slices ``IMAGE [3, L, L]`` with their ``EMBEDDING [C, h, w]`` (the image
embedding, computed once per slice and reused by the client for every box on it), plus the
model's ``VERSION`` and ``CONFIG`` (its preprocessing). Dynamic batching merges requests; the
whole batch goes through the encoder in chunks of ``max_batch_size``. Names:
``uae_ray.serving.sam_protocol``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from uae_ray.serving import sam_protocol as P

MODEL_DIR = Path(__file__).resolve().parents[1]


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def _weights(model_config: dict[str, Any]) -> tuple[str | None, str | None]:
    """(checkpoint, kind): ``$UAE_SAM_CHECKPOINT`` / ``$UAE_SAM_KIND`` win over the parameters."""
    from uae_ray.models.sam2d import SHIPPED_SAM_WEIGHTS

    params = _parameters(model_config)
    value = os.environ.get(P.ENV_CHECKPOINT) or params.get(P.PARAM_CHECKPOINT, "")
    kind = os.environ.get(P.ENV_KIND) or params.get(P.PARAM_KIND, "") or None
    if not value or value in SHIPPED_SAM_WEIGHTS:
        return value or None, kind
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else MODEL_DIR / path), kind


def _error(exc: Exception) -> "pb_utils.TritonError":
    message = f"{P.ENCODER_MODEL}: {exc.__class__.__name__}: {exc}".splitlines()[0]
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if isinstance(exc, ValueError) else "INTERNAL", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    """One instance: the image encoder on the instance's device."""

    def initialize(self, args: dict[str, str]) -> None:
        import torch

        from uae_ray.models.sam2d import load_sam2d

        config = json.loads(args["model_config"])
        threads = int(_parameters(config).get(P.PARAM_NUM_THREADS) or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        kind_ = args.get("model_instance_kind")
        self.device = torch.device(f"cuda:{int(args.get('model_instance_device_id', 0))}" if kind_ == "GPU" else "cpu")
        checkpoint, kind = _weights(config)
        model = load_sam2d(checkpoint, kind)
        self.config = model.config
        self.version = model.version
        self.config_json = json.dumps(model.config.to_dict())
        self.encoder = model.sam.image_encoder.to(self.device).eval()  # the decoder parts are not kept
        self.max_batch = int(config.get("max_batch_size") or 8) or 8
        pb_utils.Logger.log_info(f"{P.ENCODER_MODEL}: {self.version} on {self.device}")

    def _images(self, request) -> np.ndarray:
        x = pb_utils.get_input_tensor_by_name(request, P.INPUT_IMAGE).as_numpy()
        L = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{P.INPUT_IMAGE} must be [batch, 3, L, L]; got {list(x.shape)}")
        if x.shape[2] > L or x.shape[3] > L:
            raise ValueError(f"{P.INPUT_IMAGE} is larger than the model input {L}x{L}: {list(x.shape)}")
        if x.shape[2:] != (L, L):
            x = np.pad(x, ((0, 0), (0, 0), (0, L - x.shape[2]), (0, L - x.shape[3])))
        return np.ascontiguousarray(x, dtype=np.float32)

    def execute(self, requests: list) -> list:
        """Encodes the images of all requests together; one response per request, in order."""
        import torch

        batches: list[np.ndarray | Exception] = []
        for request in requests:
            try:
                batches.append(self._images(request))
            except Exception as exc:  # that request fails, the others go on
                batches.append(exc)
        good = [b for b in batches if isinstance(b, np.ndarray)]
        embeddings: list[np.ndarray] = []
        failure: Exception | None = None
        if good:
            try:
                x = np.concatenate(good)
                with torch.inference_mode():
                    for i in range(0, len(x), self.max_batch):
                        chunk = torch.from_numpy(x[i : i + self.max_batch]).to(self.device)
                        embeddings.append(self.encoder(chunk).float().cpu().numpy())
            except Exception as exc:
                failure = exc
        emb = np.concatenate(embeddings) if embeddings else None
        responses, start = [], 0
        for b in batches:
            if isinstance(b, Exception) or failure is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(b if isinstance(b, Exception) else failure)))
                continue
            n = len(b)
            tensors = [
                pb_utils.Tensor(P.OUTPUT_EMBEDDING, np.ascontiguousarray(emb[start : start + n])),
                pb_utils.Tensor(P.OUTPUT_VERSION, np.array([[self.version.encode()]] * n, dtype=np.object_)),
                pb_utils.Tensor(P.OUTPUT_CONFIG, np.array([[self.config_json.encode()]] * n, dtype=np.object_)),
            ]
            start += n
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.encoder = None
