"""Names shared by the Triton model (``model_repo/uae_embedder``) and its client.

Tensors (``max_batch_size: 0``, so the leading 1 is part of the shape):

- input ``VOLUME``: FP32 ``[1, Z, Y, X]``, a prepared volume on the model grid (2 mm, z, y, x).
- output ``LOCAL``: FP32 ``[Cl, z, y, x]`` local embedding map (stride 2), L2-normalised on C.
- output ``GLOBAL``: FP32 ``[Cg, z, y, x]`` global embedding map (stride 8), L2-normalised on C.
- output ``SEMANTIC`` (optional): FP32 ``[Cs, z, y, x]`` UAE semantic embedding map on the local
  grid, L2-normalised on C. Only a model with a semantic head (``CONFIG`` ``semantic_dim > 0``)
  produces it, and a client requests it only then (Triton answers a request for an output the
  model did not produce with an error, so it must not be requested blindly).
- output ``VERSION``: BYTES ``[1]``, the version of the model that computed the response.
- output ``CONFIG``: BYTES ``[1]``, JSON of that model's ``EmbeddingConfig.to_dict()``.

A client learns the version and config before its first real request by sending a small
probe volume (:data:`PROBE_SHAPE`, filled with air, -1). The python backend cannot publish
them as model config parameters: its ``auto_complete_config`` may only change
``max_batch_size``, inputs and outputs (Triton 2.51 drops other changes).

Model config parameters (``config.pbtxt``):

- ``checkpoint`` (may be empty) and the server's env ``UAE_CHECKPOINT`` (wins) choose the
  weights; empty: the shipped default checkpoint. A relative path is relative to the model
  folder (``model_repo/uae_embedder``).
- ``num_threads``: torch intra-op threads on CPU (``0``: torch's default).
"""

from __future__ import annotations

MODEL_NAME = "uae_embedder"

INPUT_VOLUME = "VOLUME"
OUTPUT_LOCAL = "LOCAL"
OUTPUT_GLOBAL = "GLOBAL"
OUTPUT_SEMANTIC = "SEMANTIC"
OUTPUT_VERSION = "VERSION"
OUTPUT_CONFIG = "CONFIG"

PARAM_CHECKPOINT = "checkpoint"
PARAM_NUM_THREADS = "num_threads"

ENV_CHECKPOINT = "UAE_CHECKPOINT"

#: Shape (Z, Y, X) of the probe volume a client sends to read VERSION and CONFIG.
PROBE_SHAPE = (16, 16, 16)
