"""Embedding maps of reference images (landmark templates, prelabel supports), embedded once per
model and kept under ``<out>/references/<key>.parquet``.

A scheduled job (``uae-ray watch`` every few minutes) runs the same cohort jobs with the same
templates and supports again and again; their maps are read back instead of embedded again.
The key hashes the image's bytes (a DICOM folder: its files' names and sizes), the model
version and the modality, so a changed image or model is embedded anew. Stored in the ``full``
tier (float16): the query vectors stay exact.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from uae_ray.cohort.maps_io import read_maps, write_maps
from uae_ray.storage import StorageError, exists, is_dir, join, list_uris, read_bytes, size

if TYPE_CHECKING:
    import SimpleITK as sitk

    from uae_ray.matching import Embedder, EmbeddingMaps

logger = logging.getLogger(__name__)

KEY_HEX = 16


def reference_key(image_uri: str, model_version: str, modality: str | None) -> str:
    """Stable key of (image content, model, modality)."""
    digest = hashlib.sha256(f"{model_version}|{modality}|".encode())
    if is_dir(image_uri):
        for uri in sorted(list_uris(image_uri)):
            digest.update(f"{uri.rsplit('/', 1)[-1]}:{size(uri)}|".encode())
    else:
        digest.update(read_bytes(image_uri))
    return digest.hexdigest()[:KEY_HEX]


def reference_maps(image_uri: str, image: "sitk.Image", embedder: "Embedder", modality: str | None,
                   out: str) -> tuple["EmbeddingMaps", str]:
    """``(maps, uri)`` of a reference image: read from ``<out>/references/`` when stored there
    by the same model, else embedded and stored."""
    from uae_ray.matching import embed_image

    key = reference_key(image_uri, embedder.version, modality)
    uri = join(out, "references", f"{key}.parquet")
    if exists(uri):
        try:
            maps = read_maps(uri)
            if maps.model_version == embedder.version:
                return maps, uri
        except (StorageError, OSError, ValueError, KeyError) as e:  # unreadable: embed again
            logger.warning("%s: stored reference maps unreadable (%s); embedding again", uri, e)
    maps = embed_image(image, embedder, modality)
    write_maps(uri, f"reference-{key}", maps, tier="full")
    return maps, uri
