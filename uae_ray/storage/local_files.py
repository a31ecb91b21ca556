"""The local-filesystem backend of :mod:`uae_ray.storage.objects` (paths, not ``s3://``).

Writes go through :func:`uae_ray.atomic.atomic_path` (temporary name beside the target, fsync,
``os.replace``); the temporary names end in ``.tmp-<uuid hex>`` so that listings hide them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from uae_ray.atomic import atomic_path
from uae_ray.storage.uri import temp_suffix


def exists(path: str) -> bool:
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    return os.path.isdir(path)


def size(path: str) -> int:
    return os.path.getsize(path)


def list_files(path: str, recursive: bool) -> list[str]:
    """Files below a folder (a file lists itself; nothing there lists nothing), unsorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    if not recursive:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_file()]
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        out.extend(os.path.join(root, f) for f in files)
    return out


def relative(path: str, folder: str) -> str:
    """``path`` relative to ``folder``."""
    return os.path.relpath(path, os.path.abspath(folder))


def read_bytes(path: str, offset: int, length: int | None) -> bytes:
    with open(path, "rb") as fh:
        if offset:
            fh.seek(offset)
        return fh.read() if length is None else fh.read(length)


def write_with(dest: str, write: Callable[[IO[bytes]], Any]) -> int:
    """Run ``write(fh)`` into a temporary file beside ``dest``, fsync, rename onto ``dest``.

    Returns:
        Number of bytes written.
    """
    with atomic_path(dest, suffix=temp_suffix()) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        return os.path.getsize(tmp)


def write_bytes(dest: str, data: memoryview) -> int:
    return write_with(dest, lambda fh: fh.write(data))


def upload_file(src: str, dest: str) -> int:
    def copy(fh: IO[bytes]) -> None:
        with open(src, "rb") as sf:
            shutil.copyfileobj(sf, fh, 1 << 20)

    return write_with(dest, copy)


def download(path: str, dest: str) -> None:
    upload_file(path, dest)


def delete(path: str, recursive: bool) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        if not recursive:
            raise IsADirectoryError(f"{path}: is a folder (use recursive=True)")
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def ensure_bucket(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def filesystem(path: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    return pafs.LocalFileSystem(), str(Path(path).absolute())
