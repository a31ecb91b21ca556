"""Rotation matrices from Euler angles."""

from __future__ import annotations

import numpy as np


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles (about x, y, z) in radians, shape (3, 3)."""
    ax, ay, az = angles_rad
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


__all__ = ["rotation_matrix"]
