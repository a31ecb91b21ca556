"""Atomic local file writes: write beside the target under a temporary name, then rename.

A reader never sees a half-written file, and a failed write leaves the old file (or none) in
place. Files get the mode ``open()`` would give (``0o666`` less the umask), not ``mkstemp``'s
0600.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def default_file_mode() -> int:
    """``0o666`` less the process umask (what ``open()`` would give; ``mkstemp`` gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path``.

    Args:
        path: The final file (its folder is created).
        suffix: Of the temporary name (writers that pick a format by suffix, e.g. ITK, need
            the real one); default: ``path``'s suffixes, or ``.tmp``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically and returns the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically and returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


__all__ = ["atomic_path", "default_file_mode", "write_bytes_atomic", "write_text_atomic"]
