"""Storage exceptions.

A missing object or file raises the built-in :class:`FileNotFoundError` (local and S3 alike);
other S3 failures raise :class:`StorageError` (:class:`S3UnreachableError` when the endpoint
cannot be reached). Messages start with the URI, never with
credentials: ``"<uri>: <cause>"``.
"""

from __future__ import annotations

from uae_ray.storage.config import StorageConfigError


class StorageError(OSError):
    """An S3 request failed for a reason other than a missing object: ``"<uri>: <cause>"``."""


class S3UnreachableError(StorageError):
    """The S3 endpoint could not be reached (after the client's bounded retries)."""

    def __init__(self, message: str, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint


__all__ = ["S3UnreachableError", "StorageConfigError", "StorageError"]
