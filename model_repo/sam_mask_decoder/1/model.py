"""Triton python-backend model ``sam_mask_decoder``: segment-anything's prompt encoder and mask
decoder for box prompts.

Each batch item is one box: ``EMBEDDING [C, h, w]`` (its slice's image embedding from
``sam_image_encoder``) and ``BOX [4]`` (model-input pixels); the answer is the single-mask
output's ``LOGITS [1, 4h, 4w]`` and ``IOU [1]``, plus ``VERSION``. Dynamic batching merges
requests; all boxes of a batch are decoded together
(``uae_ray.models.sam2d.decode_masks``). Names: ``uae_ray.serving.sam_protocol``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from uae_ray.serving import sam_protocol as P
from uae_ray.serving.backend import instance_device, load_sam_weights, triton_error

MODEL_DIR = Path(__file__).resolve().parents[1]
CHUNK = 256


def _error(exc: Exception) -> "pb_utils.TritonError":
    return triton_error(pb_utils, P.DECODER_MODEL, exc)


class TritonPythonModel:
    """One instance: prompt encoder + mask decoder on the instance's device."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.device = instance_device(args, config, P.PARAM_NUM_THREADS)
        model = load_sam_weights(config, MODEL_DIR)
        model.sam.image_encoder = None  # only the prompt encoder and mask decoder are served here
        self.sam = model.sam.to(self.device).eval()
        self.config = model.config
        self.version = model.version
        pb_utils.Logger.log_info(f"{P.DECODER_MODEL}: {self.version} on {self.device}")

    def _inputs(self, request) -> tuple[np.ndarray, np.ndarray]:
        emb = pb_utils.get_input_tensor_by_name(request, P.INPUT_EMBEDDING).as_numpy()
        box = pb_utils.get_input_tensor_by_name(request, P.INPUT_BOX).as_numpy()
        c, e = self.config.prompt_embed_dim, self.config.embedding_size
        if emb.ndim != 4 or tuple(emb.shape[1:]) != (c, e, e):
            raise ValueError(f"{P.INPUT_EMBEDDING} must be [batch, {c}, {e}, {e}]; got {list(emb.shape)}")
        if box.ndim != 2 or box.shape[1] != 4 or len(box) != len(emb):
            raise ValueError(f"{P.INPUT_BOX} must be [batch, 4] with the batch of {P.INPUT_EMBEDDING}; "
                             f"got {list(box.shape)}")
        return np.ascontiguousarray(emb, dtype=np.float32), np.ascontiguousarray(box, dtype=np.float32)

    def execute(self, requests: list) -> list:
        """Decodes the boxes of all requests together; one response per request, in order."""
        import torch

        from uae_ray.models.sam2d import decode_masks

        items: list[tuple[np.ndarray, np.ndarray] | Exception] = []
        for request in requests:
            try:
                items.append(self._inputs(request))
            except Exception as exc:
                items.append(exc)
        good = [it for it in items if not isinstance(it, Exception)]
        failure: Exception | None = None
        logits_parts, iou_parts = [], []
        if good:
            try:
                emb = np.concatenate([g[0] for g in good])
                box = np.concatenate([g[1] for g in good])
                with torch.inference_mode():
                    for i in range(0, len(box), CHUNK):
                        lo, iou = decode_masks(self.sam, torch.from_numpy(emb[i : i + CHUNK]).to(self.device),
                                               torch.from_numpy(box[i : i + CHUNK]).to(self.device))
                        logits_parts.append(lo.float().cpu().numpy())
                        iou_parts.append(iou.float().cpu().numpy())
            except Exception as exc:
                failure = exc
        logits = np.concatenate(logits_parts) if logits_parts else None
        ious = np.concatenate(iou_parts) if iou_parts else None
        responses, start = [], 0
        for it in items:
            if isinstance(it, Exception) or failure is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(it if isinstance(it, Exception) else failure)))
                continue
            n = len(it[1])
            tensors = [
                pb_utils.Tensor(P.OUTPUT_LOGITS, np.ascontiguousarray(logits[start : start + n])),
                pb_utils.Tensor(P.OUTPUT_IOU, np.ascontiguousarray(ious[start : start + n])),
                pb_utils.Tensor(P.OUTPUT_VERSION, np.array([[self.version.encode()]] * n, dtype=np.object_)),
            ]
            start += n
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.sam = None
