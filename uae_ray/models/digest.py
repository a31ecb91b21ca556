"""File digests and model version strings (``<name>+<first 8 hex of the file's SHA-256>``)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """Hex SHA-256 of a file's bytes (of its first ``limit`` bytes, rounded up to 1 MiB blocks,
    when given: a quick digest of very large official checkpoints)."""
    h = hashlib.sha256()
    read = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            read += len(block)
            if limit is not None and read >= limit:
                break
    return h.hexdigest()


def version_string(name: str, path: str | Path, limit: int | None = None) -> str:
    """``"<name>+<sha8>"``: a model's version, tied to the exact bytes of its weights file."""
    return f"{name}+{file_sha256(path, limit)[:8]}"


__all__ = ["file_sha256", "version_string"]
