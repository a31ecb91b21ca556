"""One object API over local paths and ``s3://bucket/key`` URIs.

Objects on S3 go through the minio SDK (one cached client per configuration and process);
Parquet readers get a ``pyarrow.fs`` filesystem from :func:`filesystem_for`.

Atomic writes (:func:`write_bytes_atomic`, :func:`upload_file`): a reader sees either the old
object or the complete new one, never a partial one.

* Local: the data goes to a temporary file in the destination folder
  (``.<name>.tmp-<uuid hex>``), is flushed and fsynced, and is renamed over the final name with
  ``os.replace`` (atomic on POSIX within one file system).
* S3 has no rename. The data is PUT to a temporary key ``<key>.tmp-<uuid hex>``, then copied
  server side to the final key (CopyObject; minio switches to a multipart copy above 5 GiB), then
  the temporary key is deleted. A single PUT or copy is all-or-nothing in S3, so the final key
  only ever appears complete. If the process dies between the steps a stray temporary key may
  remain; it never has the final name, :func:`list_uris` hides such names, and
  ``delete(prefix, recursive=True)`` removes them.

"Folders" on S3 are key prefixes: ``list_uris("s3://b/a")`` lists keys under ``a/`` (not
``ab/``), and a prefix exists when at least one object lies under it (SeaweedFS leaves empty
directory markers behind; they are ignored).

Missing objects raise :class:`FileNotFoundError`; other S3 failures
:class:`~uae_ray.storage.errors.StorageError`; messages start with the URI and never contain
credentials.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from uae_ray.storage.clients import arrow_s3_filesystem, minio_client, s3_config_for
from uae_ray.storage.errors import StorageError
from uae_ray.storage.uri import (
    TMP_MARKER,
    as_str,
    is_s3,
    is_temp_name,
    make_s3,
    parse_s3,
)

logger = logging.getLogger(__name__)

_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound"}
_BUCKET_TAKEN_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
_DIR_CONTENT_TYPE = "application/x-directory"

UriLike = str | os.PathLike[str]
BytesLike = bytes | bytearray | memoryview


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Translate minio / urllib3 errors into FileNotFoundError / StorageError naming ``uri``."""
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
        raise StorageError(
            f"{uri}: cannot reach S3 endpoint {endpoint}: {type(exc).__name__}"
        ) from exc


def _tmp_suffix() -> str:
    return f"{TMP_MARKER}{uuid.uuid4().hex}"


def _is_marker(obj: Any) -> bool:
    """SeaweedFS / MinIO directory markers (``key/``, zero bytes) are not objects for us."""
    return bool(obj.is_dir) or obj.object_name.endswith("/")


class _MemoryReader:
    """File-like ``read()`` over a buffer without copying it whole (minio reads in parts)."""

    def __init__(self, data: BytesLike) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        total = len(self._view)
        end = total if size is None or size < 0 else min(total, self._pos + size)
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk


def _iter_s3_objects(uri: str, recursive: bool = True) -> Iterator[Any]:
    """minio objects below the prefix ``uri`` (treated as a folder), markers skipped."""
    loc = parse_s3(uri)
    prefix = loc.key.rstrip("/")
    prefix = f"{prefix}/" if prefix else ""
    client = minio_client(uri)
    with _s3_errors(uri):
        for obj in client.list_objects(loc.bucket, prefix=prefix, recursive=recursive):
            if not _is_marker(obj):
                yield obj


def _matches(name: str, suffixes: tuple[str, ...] | None) -> bool:
    if is_temp_name(name):
        return False
    return suffixes is None or name.lower().endswith(suffixes)


def _norm_suffixes(suffixes: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if suffixes is None:
        return None
    if isinstance(suffixes, str):
        suffixes = [suffixes]
    return tuple(s.lower() for s in suffixes)


# --------------------------------------------------------------------------- queries


def exists(uri: UriLike) -> bool:
    """True if ``uri`` is an existing file / object, a non-empty prefix, or a bucket root."""
    text = as_str(uri)
    if not is_s3(text):
        return os.path.exists(text)
    loc = parse_s3(text)
    client = minio_client(text)
    with _s3_errors(text):
        if not loc.key.strip("/"):
            return client.bucket_exists(loc.bucket)
        if not loc.key.endswith("/"):
            try:
                stat = client.stat_object(loc.bucket, loc.key)
                if stat.content_type != _DIR_CONTENT_TYPE:
                    return True
            except Exception as exc:  # noqa: BLE001 - re-checked below
                if getattr(exc, "code", None) not in _MISSING_CODES:
                    raise
    return is_dir(text)


def is_dir(uri: UriLike) -> bool:
    """True for a local directory, or an S3 prefix with at least one object below it."""
    text = as_str(uri)
    if not is_s3(text):
        return os.path.isdir(text)
    loc = parse_s3(text)
    if not loc.key.strip("/"):
        return exists(text)
    return next(_iter_s3_objects(text, recursive=True), None) is not None


def size(uri: UriLike) -> int:
    """Size in bytes of a file / object.

    Raises:
        FileNotFoundError: No such file or object.
    """
    text = as_str(uri)
    if not is_s3(text):
        return os.path.getsize(text)
    loc = parse_s3(text)
    with _s3_errors(text):
        return int(minio_client(text).stat_object(loc.bucket, loc.key).size)


def list_uris(
    prefix: UriLike, suffixes: Iterable[str] | str | None = None, recursive: bool = True
) -> list[str]:
    """Files / objects below a folder or prefix, sorted.

    Args:
        prefix: A local folder or an ``s3://bucket/prefix`` (treated as a folder: ``a`` lists
            ``a/...``, never ``ab...``). A local file lists itself.
        suffixes: Keep names ending in one of these (case-insensitive, e.g. ``".nii.gz"``).
        recursive: Descend into sub-folders; otherwise list direct children only.

    Returns:
        URIs of the same kind as ``prefix`` (local paths or ``s3://``), files only (no folders,
        no directory markers, no in-flight temporary names). Empty if nothing is there.
    """
    text = as_str(prefix)
    sfx = _norm_suffixes(suffixes)
    out: list[str] = []
    if is_s3(text):
        bucket = parse_s3(text).bucket
        for obj in _iter_s3_objects(text, recursive=recursive):
            if _matches(obj.object_name, sfx):
                out.append(make_s3(bucket, obj.object_name))
        return sorted(out)
    if os.path.isfile(text):
        return [text] if _matches(text, sfx) else []
    if not os.path.isdir(text):
        return []
    if recursive:
        for root, dirs, files in os.walk(text):
            dirs.sort()
            out.extend(os.path.join(root, f) for f in files if _matches(f, sfx))
    else:
        with os.scandir(text) as entries:
            out.extend(e.path for e in entries if e.is_file() and _matches(e.name, sfx))
    return sorted(out)


# --------------------------------------------------------------------------- reads


def read_bytes(uri: UriLike, offset: int = 0, length: int | None = None) -> bytes:
    """Read a whole file / object, or ``length`` bytes from ``offset``.

    Raises:
        FileNotFoundError: No such file or object.
    """
    text = as_str(uri)
    if not is_s3(text):
        with open(text, "rb") as fh:
            if offset:
                fh.seek(offset)
            return fh.read() if length is None else fh.read(length)
    if length == 0:
        return b""
    from minio.error import S3Error

    loc = parse_s3(text)
    with _s3_errors(text):
        try:
            resp = minio_client(text).get_object(
                loc.bucket, loc.key, offset=offset, length=length or 0
            )
        except S3Error as exc:
            if exc.code == "InvalidRange":  # offset at/after the end: empty, like a local file
                return b""
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()


def download(uri: UriLike, local_path: UriLike) -> str:
    """Copy a file / object to a local path (parent folders are created).

    The local file appears complete or not at all (temporary name, then rename).

    Returns:
        ``local_path`` as a string.
    """
    text, dest = as_str(uri), as_str(local_path)
    if is_s3(dest):
        raise ValueError(f"{dest}: download target must be a local path")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    if not is_s3(text):
        tmp = _local_tmp_path(dest)
        try:
            shutil.copyfile(text, tmp)
            os.replace(tmp, dest)
        finally:
            _silent_remove(tmp)
        return dest
    loc = parse_s3(text)
    with _s3_errors(text):
        # minio writes "<dest>.<etag>.part.minio" and renames it when complete.
        minio_client(text).fget_object(loc.bucket, loc.key, dest)
    return dest


def download_prefix(uri: UriLike, local_dir: UriLike) -> list[str]:
    """Copy every file below a folder / prefix into ``local_dir``, keeping relative paths.

    Used for DICOM series folders. Keys that would escape ``local_dir`` (``..``) are refused.

    Returns:
        The local paths written, sorted (empty if the prefix holds nothing).

    Raises:
        StorageError: A key would land outside ``local_dir``.
    """
    text, dest = as_str(uri), os.path.abspath(as_str(local_dir))
    os.makedirs(dest, exist_ok=True)
    if is_s3(text):
        base = parse_s3(text).key.rstrip("/")
        base = f"{base}/" if base else ""
        sources = [(u, parse_s3(u).key[len(base) :]) for u in list_uris(text)]
    else:
        root = os.path.abspath(text)
        sources = [(p, os.path.relpath(p, root)) for p in list_uris(text)]
    written = []
    for src, rel in sources:
        target = os.path.abspath(os.path.join(dest, rel))
        if os.path.commonpath([dest, target]) != dest or target == dest:
            raise StorageError(f"{src}: refusing to write outside {dest}")
        written.append(download(src, target))
    logger.debug("downloaded %d files from %s", len(written), text)
    return sorted(written)


# --------------------------------------------------------------------------- writes


def _local_tmp_path(dest: str) -> str:
    folder, name = os.path.split(os.path.abspath(dest))
    return os.path.join(folder, f".{name}{_tmp_suffix()}")


def _silent_remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _local_write_atomic(dest: str, write: Any) -> int:
    """Run ``write(fh)`` into a temp file beside ``dest``, fsync, ``os.replace`` onto ``dest``."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = _local_tmp_path(dest)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        n = os.path.getsize(tmp)
        os.replace(tmp, dest)
    finally:
        _silent_remove(tmp)
    return n


def _s3_copy(client: Any, bucket: str, src_key: str, dst_key: str) -> None:
    """Server-side copy (a seam for tests that simulate a failure before publication)."""
    from minio.commonconfig import CopySource

    client.copy_object(bucket, dst_key, CopySource(bucket, src_key))


def _s3_publish(uri: str, put_tmp: Any) -> int:
    """``put_tmp(client, bucket, tmp_key)`` uploads; then copy to the final key, delete temp."""
    loc = parse_s3(uri)
    if not loc.key or loc.key.endswith("/"):
        raise ValueError(f"{uri}: an object key is required")
    tmp_key = loc.key + _tmp_suffix()
    client = minio_client(uri)
    published = False
    try:
        with _s3_errors(uri):
            n = int(put_tmp(client, loc.bucket, tmp_key))
            _s3_copy(client, loc.bucket, tmp_key, loc.key)
            published = True
    finally:
        try:
            client.remove_object(loc.bucket, tmp_key)
        except Exception as exc:  # noqa: BLE001 - cleanup must not mask the real error
            logger.warning(
                "%s: could not remove temporary key %s: %s", uri, tmp_key, type(exc).__name__
            )
    logger.debug("wrote %s (%d bytes, published=%s)", uri, n, published)
    return n


def write_bytes_atomic(uri: UriLike, data: BytesLike) -> int:
    """Write ``data`` so that the final file / object appears only complete.

    See the module docstring for the local (temp file + ``os.replace``) and S3 (temp key +
    server-side copy + delete; S3 has no rename) protocols. Parent folders are created locally;
    the S3 bucket must exist (:func:`ensure_bucket`).

    Returns:
        Number of bytes written.
    """
    text = as_str(uri)
    view = memoryview(data).cast("B")
    if not is_s3(text):
        return _local_write_atomic(text, lambda fh: fh.write(view))

    def put(client: Any, bucket: str, key: str) -> int:
        client.put_object(bucket, key, _MemoryReader(view), len(view))
        return len(view)

    return _s3_publish(text, put)


def upload_file(local_path: UriLike, uri: UriLike) -> int:
    """Copy a local file to a local path or S3 key, atomically (as :func:`write_bytes_atomic`).

    Returns:
        Number of bytes written.
    """
    src, text = as_str(local_path), as_str(uri)
    if is_s3(src):
        raise ValueError(f"{src}: upload source must be a local file")
    if not is_s3(text):
        def copy(fh: Any) -> None:
            with open(src, "rb") as sf:
                shutil.copyfileobj(sf, fh, 1 << 20)

        return _local_write_atomic(text, copy)

    def put(client: Any, bucket: str, key: str) -> int:
        client.fput_object(bucket, key, src)
        return os.path.getsize(src)

    return _s3_publish(text, put)


def delete(uri: UriLike, recursive: bool = False) -> None:
    """Delete a file / object; with ``recursive`` everything below a folder / prefix too.

    Deleting something absent is not an error.

    Raises:
        IsADirectoryError: A local folder without ``recursive``.
    """
    text = as_str(uri)
    if not is_s3(text):
        if os.path.isdir(text) and not os.path.islink(text):
            if not recursive:
                raise IsADirectoryError(f"{text}: is a folder (use recursive=True)")
            shutil.rmtree(text)
        elif os.path.lexists(text):
            os.remove(text)
        return
    loc = parse_s3(text)
    client = minio_client(text)
    if loc.key and not loc.key.endswith("/"):
        with _s3_errors(text):
            client.remove_object(loc.bucket, loc.key)
    if recursive:
        from minio.deleteobjects import DeleteObject

        with _s3_errors(text):
            names = [
                DeleteObject(o.object_name)
                for o in client.list_objects(
                    loc.bucket, prefix=(loc.key.rstrip("/") + "/") if loc.key.strip("/") else "",
                    recursive=True,
                )
            ]
            for err in client.remove_objects(loc.bucket, names):
                logger.warning("%s: could not delete %s: %s", text, err.name, err.code)


def ensure_bucket(uri: UriLike) -> None:
    """Create the bucket of an ``s3://bucket[/...]`` URI (or a local folder) if missing.

    Safe against concurrent creation.
    """
    text = as_str(uri)
    if not is_s3(text):
        os.makedirs(text, exist_ok=True)
        return
    from minio.error import S3Error

    loc = parse_s3(text)
    client = minio_client(text)
    with _s3_errors(text):
        if client.bucket_exists(loc.bucket):
            return
        try:
            client.make_bucket(loc.bucket)
            logger.info("created bucket %s", loc.bucket)
        except S3Error as exc:
            if exc.code not in _BUCKET_TAKEN_CODES:
                raise


def filesystem_for(uri: UriLike) -> tuple[Any, str]:
    """A ``pyarrow.fs.FileSystem`` and the path on it, for Parquet / Arrow I/O.

    Returns:
        ``(S3FileSystem, "bucket/key")`` for s3:// URIs (cached per configuration), else
        ``(LocalFileSystem(), absolute path)``.
    """
    from pyarrow import fs as pafs

    text = as_str(uri)
    if is_s3(text):
        loc = parse_s3(text)
        return arrow_s3_filesystem(text), f"{loc.bucket}/{loc.key}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).absolute())
