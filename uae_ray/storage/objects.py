"""One object API over local paths and ``s3://bucket/key`` URIs.

Each function picks the backend of its URI, :mod:`~uae_ray.storage.local_files` or
:mod:`~uae_ray.storage.s3_objects` (minio SDK); Parquet readers get a ``pyarrow.fs`` filesystem
from :func:`filesystem_for`.

Atomic writes (:func:`write_bytes_atomic`, :func:`upload_file`, :func:`download`): a reader sees
either the old file / object or the complete new one, never a partial one.

* Local: the data goes to a temporary file in the destination folder (``.<name>.<random>.tmp-<uuid
  hex>``), is flushed and fsynced, and is renamed over the final name with ``os.replace`` (atomic on
  POSIX within one file system).
* S3: one PUT to the final key (a multipart upload for large objects), which S3 makes
  all-or-nothing: a writer that dies mid-upload leaves the old object (or none), and the data
  is sent once (no temporary key, copy and delete). :func:`list_uris` still hides the
  ``.tmp-<hex>`` names that older versions could leave behind.

"Folders" on S3 are key prefixes: ``list_uris("s3://b/a")`` lists keys under ``a/`` (not
``ab/``), and a prefix exists when at least one object lies under it.

Missing objects raise :class:`FileNotFoundError`; other S3 failures
:class:`~uae_ray.storage.errors.StorageError`; messages start with the URI and never contain
credentials.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from uae_ray.storage import local_files, s3_objects
from uae_ray.storage.errors import StorageError
from uae_ray.storage.uri import as_str, is_s3, is_temp_name

logger = logging.getLogger(__name__)

UriLike = str | os.PathLike[str]
BytesLike = bytes | bytearray | memoryview


def _backend(text: str) -> ModuleType:
    return s3_objects if is_s3(text) else local_files


def _local_only(text: str, role: str) -> str:
    if is_s3(text):
        raise ValueError(f"{text}: {role} must be a local path")
    return text


# --------------------------------------------------------------------------- queries


def exists(uri: UriLike) -> bool:
    """True if ``uri`` is an existing file / object, a non-empty prefix, or a bucket root."""
    text = as_str(uri)
    return _backend(text).exists(text)


def is_dir(uri: UriLike) -> bool:
    """True for a local directory, or an S3 prefix with at least one object below it."""
    text = as_str(uri)
    return _backend(text).is_dir(text)


def size(uri: UriLike) -> int:
    """Size in bytes of a file / object.

    Raises:
        FileNotFoundError: No such file or object.
    """
    text = as_str(uri)
    return _backend(text).size(text)


def list_uris(prefix: UriLike, suffixes: Iterable[str] | str | None = None, recursive: bool = True) -> list[str]:
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
    wanted = None if suffixes is None else tuple(s.lower() for s in ([suffixes] if isinstance(suffixes, str) else suffixes))
    names = _backend(text).list_files(text, recursive)
    return sorted(n for n in names if not is_temp_name(n) and (wanted is None or n.lower().endswith(wanted)))


# --------------------------------------------------------------------------- reads


def read_bytes(uri: UriLike, offset: int = 0, length: int | None = None) -> bytes:
    """Read a whole file / object, or ``length`` bytes from ``offset``.

    Raises:
        FileNotFoundError: No such file or object.
    """
    text = as_str(uri)
    return _backend(text).read_bytes(text, offset, length)


def download(uri: UriLike, local_path: UriLike) -> str:
    """Copy a file / object to a local path (parent folders are created); the local file
    appears complete or not at all.

    Returns:
        ``local_path`` as a string.
    """
    text, dest = as_str(uri), _local_only(as_str(local_path), "download target")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    _backend(text).download(text, dest)
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
    backend = _backend(text)
    written = []
    for src in list_uris(text):
        target = os.path.abspath(os.path.join(dest, backend.relative(src, text)))
        if os.path.commonpath([dest, target]) != dest or target == dest:
            raise StorageError(f"{src}: refusing to write outside {dest}")
        written.append(download(src, target))
    logger.debug("downloaded %d files from %s", len(written), text)
    return sorted(written)


# --------------------------------------------------------------------------- writes


def write_bytes_atomic(uri: UriLike, data: BytesLike) -> int:
    """Write ``data`` so that the final file / object appears only complete (module docstring).

    Parent folders are created locally; the S3 bucket must exist (:func:`ensure_bucket`).

    Returns:
        Number of bytes written.
    """
    text = as_str(uri)
    return _backend(text).write_bytes(text, memoryview(data).cast("B"))


def upload_file(local_path: UriLike, uri: UriLike) -> int:
    """Copy a local file to a local path or S3 key, atomically (as :func:`write_bytes_atomic`).

    Returns:
        Number of bytes written.
    """
    src, text = _local_only(as_str(local_path), "upload source"), as_str(uri)
    return _backend(text).upload_file(src, text)


def delete(uri: UriLike, recursive: bool = False) -> None:
    """Delete a file / object; with ``recursive`` everything below a folder / prefix too.

    Deleting something absent is not an error.

    Raises:
        IsADirectoryError: A local folder without ``recursive``.
    """
    text = as_str(uri)
    _backend(text).delete(text, recursive)


def ensure_bucket(uri: UriLike) -> None:
    """Create the bucket of an ``s3://bucket[/...]`` URI (or a local folder) if missing; safe
    against concurrent creation."""
    text = as_str(uri)
    _backend(text).ensure_bucket(text)


def filesystem_for(uri: UriLike) -> tuple[Any, str]:
    """A ``pyarrow.fs.FileSystem`` and the path on it, for Parquet / Arrow I/O.

    Returns:
        ``(S3FileSystem, "bucket/key")`` for s3:// URIs (cached per configuration), else
        ``(LocalFileSystem(), absolute path)``.
    """
    text = as_str(uri)
    return _backend(text).filesystem(text)
