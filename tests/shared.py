"""The one home of ``../shared/data`` for the tests: its path, a skip mark and a skipping lookup.

Tests read the curated cases from there (never a copy in the repository) and skip, with the
reason, when the folder is absent. Fixtures use :func:`require_data`; module-level marks use
:data:`needs_shared_data`; the session fixture ``shared_data`` (``tests/conftest.py``) wraps both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not found (../shared/data beside the repository)"
)


def require_data(*parts: str) -> Path:
    """``SHARED_DATA/parts...``, or skip the calling test when that path is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (expected ../shared/data beside the repository)")
    return path
