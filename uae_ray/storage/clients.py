"""Cached S3 clients: a minio client and a pyarrow S3FileSystem per (config, process).

The configuration is re-read from the environment / config file on every call (cheap), so a
changed ``UAE_S3_*`` environment takes effect at once; clients are cached per distinct config
and per process id (connection pools must not be shared across ``fork``).
"""

from __future__ import annotations

import functools
import logging
import os

from uae_ray.storage.config import S3Config, load_s3_config
from uae_ray.storage.errors import StorageError

logger = logging.getLogger(__name__)


def s3_config_for(uri: str | None = None) -> S3Config:
    """The current S3 configuration, raising a clear error when no endpoint is set.

    Args:
        uri: The s3:// URI being accessed (named in the error).

    Raises:
        StorageConfigError: No endpoint configured.
    """
    return load_s3_config().require_endpoint(uri)


@functools.lru_cache(maxsize=16)
def _minio_client(cfg: S3Config, pid: int):  # noqa: ARG001 - pid is part of the cache key
    try:
        from minio import Minio
    except ImportError:
        raise StorageError("s3:// needs the S3 client, which is not installed: pip install 'uae-ray[stack]'") from None

    logger.debug("creating minio client for %s", cfg.endpoint)
    return Minio(
        cfg.endpoint,
        access_key=cfg.access_key,
        secret_key=cfg.secret_key,
        secure=cfg.secure,
        region=cfg.region,
    )


@functools.lru_cache(maxsize=16)
def _arrow_s3(cfg: S3Config, pid: int):  # noqa: ARG001 - pid is part of the cache key
    from pyarrow import fs as pafs

    logger.debug("creating pyarrow S3FileSystem for %s", cfg.endpoint)
    return pafs.S3FileSystem(
        access_key=cfg.access_key,
        secret_key=cfg.secret_key,
        endpoint_override=cfg.endpoint,
        scheme=cfg.scheme,
        region=cfg.region,
        connect_timeout=10,
        request_timeout=300,
    )


def minio_client(uri: str | None = None):
    """The cached ``minio.Minio`` client for the configured endpoint."""
    return _minio_client(s3_config_for(uri), os.getpid())


def arrow_s3_filesystem(uri: str | None = None):
    """The cached ``pyarrow.fs.S3FileSystem`` for the configured endpoint."""
    return _arrow_s3(s3_config_for(uri), os.getpid())


def clear_client_cache() -> None:
    """Drop cached clients (tests; after rotating credentials)."""
    _minio_client.cache_clear()
    _arrow_s3.cache_clear()
