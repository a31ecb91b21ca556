"""The S3 backend of :mod:`uae_ray.storage.objects` (``s3://bucket/key`` through the minio SDK,
one cached client per configuration and process).

A write is one PUT to the final key, or for objects above minio's part size (16 MiB here) one
multipart upload: either is all-or-nothing in S3 (a multipart object appears only at
CompleteMultipartUpload; a writer killed before leaves no object, and an aborted upload's parts
are discarded), so the final key only ever holds a complete object and the data is written once.
"Folders" are key prefixes; directory markers (SeaweedFS leaves them) are ignored.
Errors are translated (:func:`s3_errors`) into messages that start with the URI and never
contain credentials.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from uae_ray.storage.clients import arrow_s3_filesystem, minio_client, s3_config_for
from uae_ray.storage.errors import S3UnreachableError, StorageError
from uae_ray.storage.uri import make_s3, parse_s3

logger = logging.getLogger(__name__)

_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound"}
_BUCKET_TAKEN_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
_DIR_CONTENT_TYPE = "application/x-directory"


@contextlib.contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Translate minio / urllib3 errors into FileNotFoundError / StorageError naming ``uri``."""
    minio_client(uri)  # a StorageError naming the extra to install when minio is missing
    from minio.error import MinioException, S3Error
    from urllib3.exceptions import HTTPError

    try:
        yield
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            raise FileNotFoundError(f"{uri}: no such bucket") from None
        if exc.code in _MISSING_CODES:
            raise FileNotFoundError(f"{uri}: no such object") from None
        raise StorageError(f"{uri}: S3 {exc.code}: {exc.message}") from None
    except MinioException as exc:
        raise StorageError(f"{uri}: S3 request failed: {type(exc).__name__}: {exc}") from None
    except HTTPError as exc:
        endpoint = s3_config_for(uri).endpoint
        raise S3UnreachableError(f"{uri}: cannot reach S3 endpoint {endpoint}: {type(exc).__name__}",
                                 endpoint) from exc


class _MemoryReader:
    """File-like ``read()`` over a buffer without copying it whole (minio reads in parts)."""

    def __init__(self, data: memoryview) -> None:
        self._view = data
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        total = len(self._view)
        end = total if size is None or size < 0 else min(total, self._pos + size)
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk


def _folder_prefix(key: str) -> str:
    """``a/b`` -> ``a/b/`` (a prefix lists a folder, never ``a/bc``); the root stays ``""``."""
    key = key.rstrip("/")
    return f"{key}/" if key else ""


def _objects(uri: str, recursive: bool = True) -> Iterator[Any]:
    """minio objects below the prefix ``uri`` (treated as a folder), directory markers skipped."""
    loc = parse_s3(uri)
    client = minio_client(uri)
    with s3_errors(uri):
        for obj in client.list_objects(loc.bucket, prefix=_folder_prefix(loc.key), recursive=recursive):
            if not (obj.is_dir or obj.object_name.endswith("/")):
                yield obj


def exists(uri: str) -> bool:
    loc = parse_s3(uri)
    client = minio_client(uri)
    with s3_errors(uri):
        if not loc.key.strip("/"):
            return client.bucket_exists(loc.bucket)
        if not loc.key.endswith("/"):
            try:
                if client.stat_object(loc.bucket, loc.key).content_type != _DIR_CONTENT_TYPE:
                    return True
            except Exception as exc:  # noqa: BLE001 - a missing key may still be a prefix
                if getattr(exc, "code", None) not in _MISSING_CODES:
                    raise
    return is_dir(uri)


def is_dir(uri: str) -> bool:
    if not parse_s3(uri).key.strip("/"):
        return exists(uri)
    return next(_objects(uri), None) is not None


def size(uri: str) -> int:
    loc = parse_s3(uri)
    with s3_errors(uri):
        return int(minio_client(uri).stat_object(loc.bucket, loc.key).size)


def list_files(uri: str, recursive: bool) -> list[str]:
    bucket = parse_s3(uri).bucket
    return [make_s3(bucket, obj.object_name) for obj in _objects(uri, recursive=recursive)]


def relative(uri: str, folder: str) -> str:
    """The key of ``uri`` relative to the prefix ``folder``."""
    return parse_s3(uri).key[len(_folder_prefix(parse_s3(folder).key)) :]


def read_bytes(uri: str, offset: int, length: int | None) -> bytes:
    if length == 0:
        return b""
    from minio.error import S3Error

    loc = parse_s3(uri)
    with s3_errors(uri):
        try:
            resp = minio_client(uri).get_object(loc.bucket, loc.key, offset=offset, length=length or 0)
        except S3Error as exc:
            if exc.code == "InvalidRange":  # offset at/after the end: empty, like a local file
                return b""
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()


def download(uri: str, dest: str) -> None:
    loc = parse_s3(uri)
    with s3_errors(uri):
        # minio writes "<dest>.<etag>.part.minio" and renames it when complete.
        minio_client(uri).fget_object(loc.bucket, loc.key, dest)


#: Multipart part size: objects up to this size are one PUT.
PART_SIZE = 16 * 1024 * 1024


def put_stream(client: Any, bucket: str, key: str, reader: Any, length: int) -> None:
    """One PUT (multipart above :data:`PART_SIZE`) of ``length`` bytes from ``reader`` (a seam
    for tests that fail or kill a writer mid-upload)."""
    client.put_object(bucket, key, reader, length, part_size=PART_SIZE)


def _object_key(uri: str) -> tuple[str, str]:
    loc = parse_s3(uri)
    if not loc.key or loc.key.endswith("/"):
        raise ValueError(f"{uri}: an object key is required")
    return loc.bucket, loc.key


def write_bytes(uri: str, data: memoryview) -> int:
    bucket, key = _object_key(uri)
    with s3_errors(uri):
        put_stream(minio_client(uri), bucket, key, _MemoryReader(data), len(data))
    logger.debug("wrote %s (%d bytes)", uri, len(data))
    return len(data)


def upload_file(src: str, uri: str) -> int:
    bucket, key = _object_key(uri)
    n = os.path.getsize(src)
    with s3_errors(uri), open(src, "rb") as fh:
        put_stream(minio_client(uri), bucket, key, fh, n)
    logger.debug("wrote %s (%d bytes from %s)", uri, n, src)
    return n


def delete(uri: str, recursive: bool) -> None:
    loc = parse_s3(uri)
    client = minio_client(uri)
    if loc.key and not loc.key.endswith("/"):
        with s3_errors(uri):
            client.remove_object(loc.bucket, loc.key)
    if recursive:
        from minio.deleteobjects import DeleteObject

        with s3_errors(uri):
            listed = client.list_objects(loc.bucket, prefix=_folder_prefix(loc.key), recursive=True)
            names = [DeleteObject(o.object_name) for o in listed]
            for err in client.remove_objects(loc.bucket, names):
                logger.warning("%s: could not delete %s: %s", uri, err.name, err.code)


def ensure_bucket(uri: str) -> None:
    from minio.error import S3Error

    loc = parse_s3(uri)
    client = minio_client(uri)
    with s3_errors(uri):
        if client.bucket_exists(loc.bucket):
            return
        try:
            client.make_bucket(loc.bucket)
            logger.info("created bucket %s", loc.bucket)
        except S3Error as exc:
            if exc.code not in _BUCKET_TAKEN_CODES:
                raise


def filesystem(uri: str) -> tuple[Any, str]:
    loc = parse_s3(uri)
    return arrow_s3_filesystem(uri), f"{loc.bucket}/{loc.key}".rstrip("/")
