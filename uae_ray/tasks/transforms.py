"""Linear (rigid / affine) transforms between numpy ``(A, t)`` and SimpleITK objects.

A linear map sends world points ``p`` (LPS mm, (N, 3) x, y, z) to ``A @ p + t``. SimpleITK's
matrix-offset transforms store a centre ``c`` and a translation ``t_itk`` with
``T(p) = A (p - c) + c + t_itk``, so ``t_itk = A c + t - c``; the same map can be written about
any centre.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from uae_ray.atomic import atomic_path

KINDS = ("rigid", "affine")


def matrix_offset(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """``(A (3, 3), t (3,))`` with ``T(p) = A p + t`` of a linear SimpleITK transform (probed at
    the origin and the unit vectors, so any matrix-offset type and composites of them work)."""
    t0 = np.array(transform.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    cols = [np.array(transform.TransformPoint(tuple(float(v) for v in e)), dtype=np.float64) - t0 for e in np.eye(3)]
    return np.stack(cols, axis=1), t0


def make_transform(
    matrix: np.ndarray, offset: np.ndarray, kind: str, center: np.ndarray | None = None
) -> sitk.Transform:
    """A SimpleITK transform for ``p -> matrix @ p + offset``.

    Args:
        matrix: (3, 3); a rotation for ``kind="rigid"`` (orthonormal, det +1, to 1e-6).
        offset: (3,) mm.
        kind: ``"rigid"`` (:class:`sitk.Euler3DTransform`) or ``"affine"``
            (:class:`sitk.AffineTransform`).
        center: Centre of rotation stored in the transform (default: the origin); it does not
            change the map, only how its parameters read.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {', '.join(KINDS)}")
    a = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    translation = a @ c + np.asarray(offset, dtype=np.float64).reshape(3) - c
    if kind == "rigid":
        tx = sitk.Euler3DTransform()
        tx.SetCenter(tuple(float(v) for v in c))
        tx.SetMatrix(tuple(float(v) for v in a.reshape(-1)), 1e-6)
    else:
        tx = sitk.AffineTransform(3)
        tx.SetCenter(tuple(float(v) for v in c))
        tx.SetMatrix(tuple(float(v) for v in a.reshape(-1)))
    tx.SetTranslation(tuple(float(v) for v in translation))
    return tx


def convert(transform: sitk.Transform, kind: str) -> sitk.Transform:
    """The same linear map as a new ``kind`` transform, keeping the centre of ``transform``."""
    matrix, offset = matrix_offset(transform)
    center = np.asarray(transform.GetCenter()) if hasattr(transform, "GetCenter") else None
    if kind == "rigid":
        u, _, vt = np.linalg.svd(matrix)  # nearest rotation (exact for a rigid input)
        matrix = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0]) @ vt
    return make_transform(matrix, offset, kind, center)


def apply(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Transforms (N, 3) world points with a SimpleITK transform."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = [transform.TransformPoint(tuple(float(v) for v in p)) for p in pts]
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def compose(first: tuple[np.ndarray, np.ndarray], then: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, t)`` of ``p -> then(first(p))`` for two ``(A, t)`` maps."""
    a1, t1 = first
    a2, t2 = then
    return a2 @ a1, a2 @ t1 + t2


def transform_to_bytes(transform: sitk.Transform, suffix: str = ".tfm") -> bytes:
    """The bytes of ``sitk.WriteTransform`` (ITK text format for ``.tfm`` / ``.txt``)."""
    with tempfile.TemporaryDirectory(prefix="uae-ray-tfm-") as tmp:
        path = os.path.join(tmp, "transform" + suffix)
        sitk.WriteTransform(transform, path)
        return Path(path).read_bytes()


def transform_from_bytes(data: bytes, suffix: str = ".tfm") -> sitk.Transform:
    """Reads a transform from the bytes of a transform file (``sitk.ReadTransform``)."""
    with tempfile.TemporaryDirectory(prefix="uae-ray-tfm-") as tmp:
        path = os.path.join(tmp, "transform" + suffix)
        Path(path).write_bytes(data)
        return sitk.ReadTransform(path)


def write_transform_atomic(transform: sitk.Transform, path: str | Path) -> Path:
    """``sitk.WriteTransform`` to a temporary file beside ``path`` (same suffix, so ITK picks
    the same format), then an atomic rename."""
    path = Path(path)
    with atomic_path(path, "".join(path.suffixes) or ".tfm") as tmp:
        sitk.WriteTransform(transform, tmp)
    return path


__all__ = [
    "KINDS",
    "apply",
    "compose",
    "convert",
    "make_transform",
    "matrix_offset",
    "transform_from_bytes",
    "transform_to_bytes",
    "write_transform_atomic",
]
