"""The watcher's cursor: where discovery resumes, stored atomically as
``<out>/watch/cursor.json`` (one PUT / rename; a reader sees the old or the new cursor, never a
mix). It is written only after every step of the studies it covers is committed, so a watcher
killed mid-cycle discovers the same studies again and the cohort manifests skip what was done.

JSON ``{"source": <source URL, no credentials>, "kind": "orthanc-changes" | "s3-listing",
"position": <int>, "cycle": <int>, "updated_at": <ISO 8601 UTC>}``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from uae_ray.storage import exists, join, read_bytes, write_bytes_atomic


class CursorError(ValueError):
    """A cursor that cannot be used (another source's, or unreadable); one line."""


@dataclass(frozen=True)
class Cursor:
    """Discovery position of one source (see the module docstring)."""

    source: str
    kind: str
    position: int = 0
    cycle: int = 0
    updated_at: str = ""


def cursor_uri(out: str) -> str:
    """Where the cursor of an output prefix lives."""
    return join(out, "watch", "cursor.json")


def read_cursor(out: str, source: str, kind: str) -> Cursor:
    """The stored cursor, or a fresh one (position 0) when none is stored.

    Raises:
        CursorError: The stored cursor is unreadable or belongs to another source.
    """
    uri = cursor_uri(out)
    if not exists(uri):
        return Cursor(source, kind)
    try:
        doc = json.loads(read_bytes(uri).decode("utf-8"))
        cursor = Cursor(**{k: doc[k] for k in ("source", "kind", "position", "cycle", "updated_at")})
    except (ValueError, KeyError, TypeError):
        raise CursorError(f"{uri}: unreadable watch cursor; move it away to start over") from None
    if (cursor.source, cursor.kind) != (source, kind):
        raise CursorError(f"{uri}: the cursor is of {cursor.source} ({cursor.kind}), not {source}; "
                          "use another --out per source")
    return cursor


def write_cursor(out: str, cursor: Cursor, position: int) -> Cursor:
    """Stores the cursor advanced to ``position`` (atomically) and returns it."""
    new = Cursor(cursor.source, cursor.kind, int(position), cursor.cycle + 1,
                 datetime.now(UTC).isoformat(timespec="seconds"))
    write_bytes_atomic(cursor_uri(out), json.dumps(asdict(new), indent=1).encode("utf-8"))
    return new
