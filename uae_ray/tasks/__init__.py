"""Tasks built on the embeddings: landmarks (and, later, tracking, registration, segmentation)."""

from uae_ray.tasks.points_io import (
    Detection,
    LesionPoints,
    NamedPoints,
    PointsFileError,
    Track,
    read_detections_csv,
    read_lesions_csv,
    read_points_csv,
    read_tracks_csv,
    write_detections_csv,
    write_points_csv,
    write_tracks_csv,
)

__all__ = [
    "Detection",
    "LesionPoints",
    "NamedPoints",
    "PointsFileError",
    "Track",
    "read_detections_csv",
    "read_lesions_csv",
    "read_points_csv",
    "read_tracks_csv",
    "write_detections_csv",
    "write_points_csv",
    "write_tracks_csv",
]
