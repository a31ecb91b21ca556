"""Tasks built on the embeddings: landmarks (and, later, tracking, registration, segmentation)."""

from uae_ray.tasks.points_io import (
    Detection,
    NamedPoints,
    PointsFileError,
    read_detections_csv,
    read_points_csv,
    write_detections_csv,
    write_points_csv,
)

__all__ = [
    "Detection",
    "NamedPoints",
    "PointsFileError",
    "read_detections_csv",
    "read_points_csv",
    "write_detections_csv",
    "write_points_csv",
]
