"""uae-ray: self-supervised anatomical embeddings for CT/MR over whole archives.

The public Python API (loaded on first use, so that ``import uae_ray.volume`` stays light)::

    import uae_ray
    uae = uae_ray.UAE()                          # default model; UAE(checkpoint=..., triton_url=...)
    a, b = uae.embed("a.nii.gz"), uae.embed("b.nii.gz")
    res = a.find([[x, y, z]], b)                 # (N, 3) LPS mm -> MatchResult (points, scores, found)

    uae_ray.landmarks(template, {"name": (x, y, z)}, [target, ...])   # -> list[Detection]
    uae_ray.track(baseline, followup, "lesions.csv")                  # -> list[Track]
    uae_ray.register(fixed, moving, "affine")                         # -> RegistrationResult (.transform: sitk)
    uae_ray.localize(["img.nii.gz:labels.nii.gz"], target, "liver")   # -> list[OrganBox]
    uae_ray.segment(["img.nii.gz:labels.nii.gz"], target, "liver")   # -> SegmentationResult (.labels: sitk)

Images are SimpleITK images, local paths or ``s3://`` URIs (files or DICOM series folders);
world points are x, y, z in the images' physical frame (DICOM/ITK LPS, millimetres).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS = {
    "UAE": "uae_ray.api.predictor",
    "EmbeddedScan": "uae_ray.api.predictor",
    "landmarks": "uae_ray.api.verbs",
    "track": "uae_ray.api.verbs",
    "register": "uae_ray.api.verbs",
    "localize": "uae_ray.api.verbs",
    "segment": "uae_ray.api.verbs",
    "MatchResult": "uae_ray.matching.result",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'uae_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
