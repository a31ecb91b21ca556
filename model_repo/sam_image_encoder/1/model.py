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
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from uae_ray.serving import sam_protocol as P
from uae_ray.serving.backend import instance_device, load_sam_weights, triton_error

MODEL_DIR = Path(__file__).resolve().parents[1]


def _error(exc: Exception) -> "pb_utils.TritonError":
    return triton_error(pb_utils, P.ENCODER_MODEL, exc)


class TritonPythonModel:
    """One instance: the image encoder on the instance's device."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.device = instance_device(args, config, P.PARAM_NUM_THREADS)
        model = load_sam_weights(config, MODEL_DIR)
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
