"""Storage exceptions.

A missing object or file raises the built-in :class:`FileNotFoundError` (local and S3 alike);
other S3 failures raise :class:`StorageError`. Messages start with the URI, never with
credentials: ``"<uri>: <cause>"``.
"""

from __future__ import annotations

from uae_ray.storage.config import StorageConfigError


class StorageError(OSError):
    """An S3 request failed for a reason other than a missing object: ``"<uri>: <cause>"``."""


__all__ = ["StorageConfigError", "StorageError"]
