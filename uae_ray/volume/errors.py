"""Error type for problems with an input image or label file."""

from __future__ import annotations

from pathlib import Path


class VolumeError(ValueError):
    """An input volume cannot be used.

    The message is always ONE line of the form ``"<source>: <cause>"`` where ``source`` is the
    file or folder the image came from (or a caller-given description for in-memory images).
    """

    def __init__(self, source: str | Path, cause: str) -> None:
        self.source = str(source)
        self.cause = " ".join(str(cause).split())  # collapse newlines / runs of blanks
        super().__init__(f"{self.source}: {self.cause}")


def one_line(exc: BaseException) -> str:
    """A one-line message for any exception: the message itself for input errors
    (``ValueError``, ``OSError``), prefixed with the type name otherwise."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"
