"""The watcher's index of materialised series (``<out>/watch/index.json``: series key ->
``meta.json`` content), and the longitudinal pairing it gives.

The index is rewritten atomically after each study is materialised; it can always be rebuilt
from the ``meta.json`` files (:func:`rebuild_index`), which stay the source of truth.
"""

from __future__ import annotations

import json

from uae_ray.storage import basename, exists, join, list_uris, read_bytes, write_bytes_atomic
from uae_ray.watch.materialize import IMAGE_NAME, META_NAME, series_root


def index_uri(out: str) -> str:
    return join(out, "watch", "index.json")


def read_index(out: str) -> dict[str, dict]:
    """Series key -> meta of every materialised series (empty when none)."""
    uri = index_uri(out)
    return json.loads(read_bytes(uri).decode("utf-8")) if exists(uri) else {}


def write_index(out: str, index: dict[str, dict]) -> None:
    write_bytes_atomic(index_uri(out), json.dumps(index, indent=1, sort_keys=True).encode("utf-8"))


def rebuild_index(out: str) -> dict[str, dict]:
    """The index from the ``meta.json`` files whose image is stored."""
    root = series_root(out)
    uris = set(list_uris(root, recursive=True)) if exists(root) else set()
    index = {}
    for uri in sorted(u for u in uris if basename(u) == META_NAME):
        folder = uri.rsplit("/", 1)[0]
        if join(folder, IMAGE_NAME) in uris:
            meta = json.loads(read_bytes(uri).decode("utf-8"))
            index[meta["series_key"]] = meta
    return index


def _when(meta: dict) -> str:
    return f"{meta.get('study_date') or ''}{meta.get('study_time') or ''}"


def prior_of(meta: dict, index: dict[str, dict]) -> dict | None:
    """The most recent earlier study of the same (hashed) patient, or ``None``: the first study
    of a patient, a study without a patient id or date, or no study dated before it."""
    if not meta.get("patient") or not _when(meta):
        return None
    earlier = [m for m in index.values() if m.get("patient") == meta["patient"] and m["study_key"] != meta["study_key"]
               and _when(m) and _when(m) < _when(meta)]
    return max(earlier, key=lambda m: (_when(m), m["series_key"])) if earlier else None
