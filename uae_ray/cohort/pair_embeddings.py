"""Stored embeddings for the scans of pair jobs (``cohort track``, ``cohort register``).

Scans of the pairs that have no stored embeddings of the model are embedded first with
``cohort embed``'s own tasks (and stored for later jobs); pairs whose scan could not be embedded
are reported with that scan's error.
"""

from __future__ import annotations

import logging

from uae_ray.cohort.embed import embed_scans
from uae_ray.cohort.pairs import ScanPair
from uae_ray.storage import ScanRef, basename
from uae_ray.storage.images import is_image_name

logger = logging.getLogger(__name__)


def scan_refs(pairs: list[ScanPair]) -> list[ScanRef]:
    """The distinct scans of ``pairs`` (first seen first)."""
    refs: dict[str, ScanRef] = {}
    for p in pairs:
        for uri, sid in ((p.first, p.first_id), (p.second, p.second_id)):
            refs.setdefault(sid, ScanRef(uri, sid, "file" if is_image_name(basename(uri)) else "dicom"))
    return list(refs.values())


def embed_missing(
    pairs: list[ScanPair],
    embeddings: str,
    model_version: str,
    triton_url: str | None,
    checkpoint: str | None,
    ray_address: str | None,
    roles: tuple[str, str],
) -> tuple[list[ScanPair], list[tuple[ScanPair, str]], int]:
    """Embeds the pairs' scans that lack stored embeddings of ``model_version``.

    Args:
        roles: Names of the first and second scan of a pair in error messages
            (e.g. ``("fixed", "moving")``).

    Returns:
        ``(ready pairs, [(failed pair, one-line error)], number of scans embedded now)``.
    """
    embedded, embed_manifest, n_embedded = embed_scans(scan_refs(pairs), embeddings, model_version, triton_url,
                                                       checkpoint, ray_address)
    ready: list[ScanPair] = []
    failed: list[tuple[ScanPair, str]] = []
    for p in pairs:
        missing = [(role, sid) for role, sid in zip(roles, (p.first_id, p.second_id)) if sid not in embedded]
        if not missing:
            ready.append(p)
            continue
        role, sid = missing[0]
        previous = embed_manifest.get(sid)
        error = previous.error if previous and previous.error else "no embeddings"
        failed.append((p, f"{role} embedding failed: {error}"))
    return ready, failed, n_embedded
