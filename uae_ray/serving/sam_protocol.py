"""Names shared by the Triton segment-anything models and their client.

``model_repo/sam_image_encoder`` (``max_batch_size`` 16, dynamic batching; shapes below exclude
the batch dimension):

- input ``IMAGE``: FP32 ``[3, L, L]``, a slice prepared by
  :func:`uae_ray.models.sam2d.prepare_slices` (resized, normalised, padded). A smaller input is
  zero-padded bottom/right to ``L`` (what SAM's preprocessing does after normalising), so a
  tiny probe works before the client knows ``L``; a larger one is an error.
- output ``EMBEDDING``: FP32 ``[C, h, w]`` image embedding.
- outputs ``VERSION`` and ``CONFIG``: BYTES ``[1]``, the model version and the JSON of its
  :class:`~uae_ray.models.sam2d.Sam2DConfig` (the preprocessing the client must apply).

``model_repo/sam_mask_decoder`` (``max_batch_size`` 256, dynamic batching): one box per item.

- inputs ``EMBEDDING``: FP32 ``[C, h, w]`` (the box's slice embedding) and ``BOX``: FP32
  ``[4]`` ``x0, y0, x1, y1`` in model-input pixels.
- outputs ``LOGITS``: FP32 ``[1, 4h, 4w]`` low-resolution mask logits (single-mask output),
  ``IOU``: FP32 ``[1]`` predicted mask quality, ``VERSION``: BYTES ``[1]``.

Both load the same weights: the server's env ``UAE_SAM_CHECKPOINT`` (wins), else the config
parameter ``checkpoint`` (a shipped name, or a path absolute or relative to the model folder),
else the shipped default (``sam-vit-tiny-v1``); ``kind`` (env ``UAE_SAM_KIND``) names the kind of
an official ``.pth`` (``vit_b``, ``vit_l``, ``vit_h``, ``medsam``). ``num_threads``: torch CPU threads.
"""

from __future__ import annotations

ENCODER_MODEL = "sam_image_encoder"
DECODER_MODEL = "sam_mask_decoder"

INPUT_IMAGE = "IMAGE"
OUTPUT_EMBEDDING = "EMBEDDING"
INPUT_EMBEDDING = "EMBEDDING"
INPUT_BOX = "BOX"
OUTPUT_LOGITS = "LOGITS"
OUTPUT_IOU = "IOU"
OUTPUT_VERSION = "VERSION"
OUTPUT_CONFIG = "CONFIG"

PARAM_CHECKPOINT = "checkpoint"
PARAM_KIND = "kind"
PARAM_NUM_THREADS = "num_threads"
ENV_CHECKPOINT = "UAE_SAM_CHECKPOINT"
ENV_KIND = "UAE_SAM_KIND"

#: Probe image (batch of one) sent to read the encoder's version and config.
PROBE_SHAPE = (1, 3, 16, 16)
