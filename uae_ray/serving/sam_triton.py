""":class:`~uae_ray.tasks.segment.SliceSegmenter` backed by Triton (``model_repo/sam_image_encoder``
and ``model_repo/sam_mask_decoder``; names in :mod:`uae_ray.serving.sam_protocol`).

The encoder's version and :class:`~uae_ray.models.sam2d.Sam2DConfig` (the preprocessing the
client applies) come from a probe request on first use; every decoder answer carries its
version, and a mismatch with the encoder's is an error (the two would mix models). Retries,
timeouts and error messages are those of :class:`~uae_ray.serving.triton.TritonEmbedder`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from uae_ray.models.sam2d import Sam2DConfig
from uae_ray.serving import sam_protocol as P
from uae_ray.serving.triton import TritonEmbedder, TritonEmbedderError, triton_http

logger = logging.getLogger(__name__)

#: Bytes of embeddings sent in one decoder request (the batch is cut to stay below).
DECODER_REQUEST_BYTES = 32 << 20


class TritonSliceSegmenter:
    """Implements ``SliceSegmenter`` through a Triton server.

    Args:
        url: Triton HTTP endpoint, ``host:port``.
        encoder_model / decoder_model: model names in the server's repository.
        timeout_s / retries / backoff_s: as :class:`~uae_ray.serving.triton.TritonEmbedder`.
        encoder_batch: images per encoder request (at most the model's ``max_batch_size``, 16).
        decoder_batch: most boxes per decoder request (``max_batch_size`` 256).

    Raises:
        TritonUnavailableError / TritonEmbedderError: on first use, as the embedder does.
    """

    def __init__(self, url: str, encoder_model: str = P.ENCODER_MODEL, decoder_model: str = P.DECODER_MODEL,
                 timeout_s: float = 300.0, retries: int = 6, backoff_s: float = 0.5, encoder_batch: int = 16,
                 decoder_batch: int = 256) -> None:
        triton_http()  # one line naming the extra to install when the client is missing
        self._enc = TritonEmbedder(url, encoder_model, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        self._dec = TritonEmbedder(url, decoder_model, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        self.url = self._enc.url
        self.encoder_batch = max(1, min(int(encoder_batch), 16))
        self.decoder_batch = max(1, min(int(decoder_batch), 256))
        self._meta: tuple[str, Sam2DConfig] | None = None

    def __repr__(self) -> str:
        return f"TritonSliceSegmenter(url={self.url!r})"

    def close(self) -> None:
        self._enc.close()
        self._dec.close()

    # ------------------------------------------------------------------------ metadata
    def _metadata(self) -> tuple[str, Sam2DConfig]:
        if self._meta is None:
            self._enc.check_ready()
            self._dec.check_ready()
            result = self._infer_encoder(np.zeros(P.PROBE_SHAPE, np.float32), (P.OUTPUT_VERSION, P.OUTPUT_CONFIG),
                                         "probe")
            try:
                version = TritonEmbedder._text(_first_row(result, P.OUTPUT_VERSION), P.OUTPUT_VERSION)
                config = Sam2DConfig.from_dict(json.loads(TritonEmbedder._text(_first_row(result, P.OUTPUT_CONFIG),
                                                                               P.OUTPUT_CONFIG)))
            except (TritonEmbedderError, ValueError, TypeError) as exc:
                raise TritonEmbedderError(f"Triton at {self.url}: model {self._enc.model_name!r} does not answer "
                                          f"like model_repo/{P.ENCODER_MODEL} ({exc})") from exc
            self._meta = (version, config)
        return self._meta

    @property
    def version(self) -> str:
        """Version of the served segment-anything weights."""
        return self._metadata()[0]

    @property
    def config(self) -> Sam2DConfig:
        """:class:`Sam2DConfig` of the served model."""
        return self._metadata()[1]

    # ---------------------------------------------------------------------- inference
    def _infer_encoder(self, images: np.ndarray, outputs: tuple[str, ...], what: str) -> Any:
        httpclient = triton_http()

        inp = httpclient.InferInput(P.INPUT_IMAGE, list(images.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32), binary_data=True)
        requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
        return self._enc._call(f"{what} of {P.ENCODER_MODEL}",
                               lambda c: c.infer(self._enc.model_name, [inp], outputs=requested), retry_timeouts=False)

    def _check_version(self, result: Any, model: str) -> None:
        served = TritonEmbedder._text(_first_row(result, P.OUTPUT_VERSION), P.OUTPUT_VERSION)
        if served != self.version:
            self._meta = None
            raise TritonEmbedderError(f"Triton at {self.url}: {model} serves {served}, not {self.version}; "
                                      f"results would mix models (both must load the same weights)")

    def encode(self, images: np.ndarray) -> np.ndarray:
        """``(S, 3, L, L)`` prepared images -> ``(S, C, h, w)`` embeddings (one request per
        ``encoder_batch`` images; the server batches them further)."""
        images = np.asarray(images, dtype=np.float32)
        L = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, L, L):
            raise ValueError(f"images must be (S, 3, {L}, {L}); got {images.shape}")
        out = []
        for i in range(0, len(images), self.encoder_batch):
            chunk = images[i : i + self.encoder_batch]
            result = self._infer_encoder(chunk, (P.OUTPUT_EMBEDDING, P.OUTPUT_VERSION), f"encoding of {len(chunk)} slice(s)")
            self._check_version(result, P.ENCODER_MODEL)
            out.append(np.asarray(result.as_numpy(P.OUTPUT_EMBEDDING), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C, h, w)`` embeddings + ``(N, 4)`` boxes -> ``(logits (N, 1, m, m), iou (N,))``."""
        httpclient = triton_http()

        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        boxes = np.ascontiguousarray(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        if len(embeddings) != len(boxes):
            raise ValueError(f"{len(embeddings)} embeddings for {len(boxes)} boxes")
        per_item = max(int(np.prod(embeddings.shape[1:])) * 4, 1)
        step = max(1, min(self.decoder_batch, DECODER_REQUEST_BYTES // per_item))
        logits, ious = [], []
        for i in range(0, len(boxes), step):
            e, b = embeddings[i : i + step], boxes[i : i + step]
            inputs = [httpclient.InferInput(P.INPUT_EMBEDDING, list(e.shape), "FP32"),
                      httpclient.InferInput(P.INPUT_BOX, list(b.shape), "FP32")]
            inputs[0].set_data_from_numpy(e, binary_data=True)
            inputs[1].set_data_from_numpy(b, binary_data=True)
            requested = [httpclient.InferRequestedOutput(n, binary_data=True)
                         for n in (P.OUTPUT_LOGITS, P.OUTPUT_IOU, P.OUTPUT_VERSION)]
            result = self._dec._call(f"decoding of {len(b)} box(es) by {P.DECODER_MODEL}",
                                     lambda c: c.infer(self._dec.model_name, inputs, outputs=requested),
                                     retry_timeouts=False)
            self._check_version(result, P.DECODER_MODEL)
            logits.append(np.asarray(result.as_numpy(P.OUTPUT_LOGITS), dtype=np.float32))
            ious.append(np.asarray(result.as_numpy(P.OUTPUT_IOU), dtype=np.float32).reshape(-1))
        if not logits:
            m = self.config.low_res_size
            return np.zeros((0, 1, m, m), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(logits), np.concatenate(ious)


class _Row:
    """The first batch row of a BYTES output, shaped as ``TritonEmbedder._text`` expects."""

    def __init__(self, value: np.ndarray | None, name: str) -> None:
        self.value, self.name = value, name

    def as_numpy(self, name: str) -> np.ndarray | None:
        return None if self.value is None else self.value.reshape(-1)[:1]


def _first_row(result: Any, name: str) -> _Row:
    return _Row(result.as_numpy(name), name)


__all__ = ["TritonSliceSegmenter"]
