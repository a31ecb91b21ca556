"""Box modes and the 2D segmenter behind one interface (in-process torch here, Triton in serving)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from uae_ray.models.sam2d import Sam2DConfig


#: Box modes of ``uae-ray segment --boxes``.
BOX_MODES = ("wpl", "spl")
DEFAULT_BOX_MODE = "spl"
#: Most parts an organ is split into along z for SPL (MedLSAM).
SPL_MAX_PARTS = 6
#: SPL parts are at least this thick (mm) in the support.
SPL_MIN_PART_MM = 25.0
#: Orientation every target is segmented in.
ORIENTATION = "LPS"

SliceBoxes = dict[int, np.ndarray]  # z -> (4,) x0, y0, x1, y1 (inclusive voxel indices)


# -- the network behind one interface -------------------------------------------------------------


@runtime_checkable
class SliceSegmenter(Protocol):
    """Runs a 2D segment-anything model.

    Attributes:
        config: the model's :class:`~uae_ray.models.sam2d.Sam2DConfig` (its preprocessing).
        version: the model's version string.
    """

    config: Sam2DConfig
    version: str

    def encode(self, images: np.ndarray) -> np.ndarray:
        """``(S, 3, L, L)`` prepared images -> ``(S, C, h, w)`` float32 image embeddings."""

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C, h, w)`` embeddings (one per box), ``(N, 4)`` boxes in model-input pixels ->
        ``(logits (N, 1, m, m), iou (N,))`` float32."""


class LocalSliceSegmenter:
    """:class:`SliceSegmenter` with the model in this process (torch).

    Args:
        model: a :class:`~uae_ray.models.sam2d.Sam2D`; default: ``load_sam2d(checkpoint, kind)``.
        checkpoint: see :func:`~uae_ray.models.sam2d.load_sam2d` (None: the shipped default).
        kind: official kind for ``.pth`` files (``vit_b``, ``vit_h``, ``medsam``, ...).
        batch_size: images per encoder call and ``16 x`` that boxes per decoder call.
        device: torch device (default: CUDA when available).
    """

    def __init__(self, model=None, checkpoint=None, kind: str | None = None, batch_size: int = 8,
                 device: str | None = None) -> None:
        import torch

        from uae_ray.models.sam2d import load_sam2d

        self.model = model if model is not None else load_sam2d(checkpoint, kind)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.model.to(self.device).eval()
        self.config: Sam2DConfig = self.model.config
        self.version: str = self.model.version
        self.batch_size = max(int(batch_size), 1)

    def encode(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.as_tensor(np.ascontiguousarray(images[i : i + self.batch_size]), dtype=torch.float32)
                out.append(self.model.encode(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        logits, ious = [], []
        step = 16 * self.batch_size
        with torch.inference_mode():
            for i in range(0, len(boxes), step):
                e = torch.as_tensor(np.ascontiguousarray(embeddings[i : i + step]), dtype=torch.float32)
                b = torch.as_tensor(np.ascontiguousarray(boxes[i : i + step]), dtype=torch.float32)
                lo, iou = self.model.decode(e.to(self.device), b.to(self.device))
                logits.append(lo.float().cpu().numpy())
                ious.append(iou[:, 0].float().cpu().numpy())
        return np.concatenate(logits), np.concatenate(ious)
