"""Fixtures and helpers for the volume tests: synthetic images, DICOM series, real data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tests.shared import require_data  # noqa: F401  (re-exported for the volume tests)
from uae_ray.volume.dicom_write import write_dicom_series  # noqa: F401  (re-exported for the tests)


def rotation_direction(ax: float = 0.3, ay: float = -0.2, az: float = 0.5) -> tuple[float, ...]:
    """Row-major 3x3 oblique rotation matrix (angles in radians) as a sitk direction."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


def make_image(
    array_zyx: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    """sitk image from a (Z, Y, X) array with the given geometry (x, y, z tuples)."""
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction])
    return image


def random_ct(shape_zyx=(12, 14, 16), seed: int = 0, **geometry) -> sitk.Image:
    """int16 CT-like image: air (-1000) background with a soft-tissue block of noise."""
    rng = np.random.default_rng(seed)
    array = np.full(shape_zyx, -1000, dtype=np.int16)
    z, y, x = shape_zyx
    array[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = rng.integers(
        -100, 200, size=(3 * z // 4 - z // 4, 3 * y // 4 - y // 4, 3 * x // 4 - x // 4)
    )
    return make_image(array, **geometry)


def read_landmarks(case: str) -> dict[str, np.ndarray]:
    """Landmarks of a real case: name -> (3,) world point (LPS mm)."""
    path = require_data("cases", case, "landmarks.csv")
    with open(path, newline="") as fh:
        return {row["name"]: np.array([float(row[k]) for k in "xyz"]) for row in csv.DictReader(fh)}


def manifest() -> list[dict[str, str]]:
    """Rows of ../shared/data/manifest.csv (skips when absent)."""
    with open(require_data("manifest.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def case_meta(case: str) -> dict:
    """meta.json of a real case."""
    return json.loads(require_data("cases", case, "meta.json").read_text())
