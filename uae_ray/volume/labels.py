"""Facts about label maps that several tasks need (no I/O)."""

from __future__ import annotations

import numpy as np


def labels_on_border(labels: np.ndarray) -> set[int]:
    """Label values with a voxel on any of the six faces of a (Z, Y, X) label array.

    A structure on a face is cut by the field of view: its centroid is not the anatomical
    centroid, so it is no corresponding point between scans.
    """
    faces = (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1])
    return set(np.unique(np.concatenate([f.ravel() for f in faces])).tolist())


__all__ = ["labels_on_border"]
