"""Pure string helpers for URIs: local paths and ``s3://bucket/key``.

A URI is a ``str`` (``os.PathLike`` is accepted wherever a URI is taken). Local paths are
returned as given (``~`` expanded, ``file://`` stripped); S3 URIs are ``s3://bucket/key`` with
``/`` separators and no leading slash in the key. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import uuid
from typing import NamedTuple

S3_SCHEME = "s3://"
# Names of in-flight atomic writes: "<name>.tmp-<32 hex>" (S3 keys and local files alike).
TMP_MARKER = ".tmp-"
_TMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}$")
# minio's own partial download files.
_PART_SUFFIXES = (".part.minio",)


class S3Location(NamedTuple):
    """A parsed ``s3://bucket/key`` (``key`` may be empty for the bucket root)."""

    bucket: str
    key: str


def as_str(uri: str | os.PathLike[str]) -> str:
    """The URI as a plain string (``~`` expanded and ``file://`` stripped for local paths)."""
    text = os.fspath(uri)
    if is_s3(text):
        return text
    if text.startswith("file://"):
        text = text[len("file://") :]
    return os.path.expanduser(text)


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://...`` URIs (case-insensitive scheme)."""
    return os.fspath(uri)[:5].lower() == S3_SCHEME


def parse_s3(uri: str | os.PathLike[str]) -> S3Location:
    """Split ``s3://bucket/key`` into bucket and key.

    Raises:
        ValueError: Not an s3:// URI, or no bucket name.
    """
    text = os.fspath(uri)
    if not is_s3(text):
        raise ValueError(f"{text}: not an s3:// URI")
    rest = text[len(S3_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text}: no bucket in s3:// URI")
    return S3Location(bucket, key.lstrip("/"))


def make_s3(bucket: str, key: str = "") -> str:
    """Build ``s3://bucket/key``."""
    return f"{S3_SCHEME}{bucket}/{key.lstrip('/')}" if key else f"{S3_SCHEME}{bucket}"


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path components onto a URI (``/`` for S3, ``os.path.join`` for local paths).

    Example:
        ``join("s3://b/out/", "scan", "emb.parquet") == "s3://b/out/scan/emb.parquet"``
    """
    text = as_str(uri)
    if not is_s3(text):
        return os.path.join(text, *parts)
    loc = parse_s3(text)
    pieces = [p for p in [loc.key.strip("/"), *(str(x).strip("/") for x in parts)] if p]
    return make_s3(loc.bucket, "/".join(pieces))


def basename(uri: str | os.PathLike[str]) -> str:
    """Last path component (ignoring a trailing slash)."""
    text = as_str(uri)
    if is_s3(text):
        return posixpath.basename(parse_s3(text).key.rstrip("/"))
    return os.path.basename(text.rstrip(os.sep))


def parent(uri: str | os.PathLike[str]) -> str:
    """The containing folder / prefix (no trailing slash)."""
    text = as_str(uri)
    if is_s3(text):
        loc = parse_s3(text)
        return make_s3(loc.bucket, posixpath.dirname(loc.key.rstrip("/")))
    return os.path.dirname(text.rstrip(os.sep)) or "."


def relative_to(uri: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """Path of ``uri`` below ``root`` with ``/`` separators (no leading or trailing slash).

    Local paths are compared after ``os.path.abspath`` (symlinks are not resolved), so the
    result does not depend on the working directory or on where the archive is mounted.

    Raises:
        ValueError: ``uri`` is not below ``root`` (or they mix local and S3).
    """
    u, r = as_str(uri), as_str(root)
    if is_s3(u) != is_s3(r):
        raise ValueError(f"{u}: not below {r}")
    if is_s3(u):
        lu, lr = parse_s3(u), parse_s3(r)
        key, prefix = lu.key.strip("/"), lr.key.strip("/")
        below = not prefix or key == prefix or key.startswith(prefix + "/")
        if lu.bucket != lr.bucket or not below:
            raise ValueError(f"{u}: not below {r}")
        return key[len(prefix) :].strip("/")
    au, ar = os.path.abspath(u), os.path.abspath(r)
    rel = os.path.relpath(au, ar)
    if rel == os.curdir:
        return ""
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{u}: not below {r}")
    return rel.replace(os.sep, "/")


def temp_suffix() -> str:
    """Suffix of a new in-flight name, ``.tmp-<uuid hex>`` (:func:`is_temp_name` recognises it)."""
    return f"{TMP_MARKER}{uuid.uuid4().hex}"


def is_temp_name(uri: str | os.PathLike[str]) -> bool:
    """True for names of in-flight atomic writes (``*.tmp-<uuid hex>``, ``*.part.minio``)."""
    name = os.fspath(uri)
    return bool(_TMP_RE.search(name)) or name.endswith(_PART_SUFFIXES)


def uri_hash(text: str, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]
